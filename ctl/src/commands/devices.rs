//! `meshctl devices` and `meshctl devices remove ID`

use meshd_ipc::{DeviceEntry, LinkState, Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::{print_json, print_table};
use crate::stdout::outln;

/// Lists every known device.
pub fn list(client: &mut Client, json: bool) -> Result<(), CtlError> {
    // A large hub sends its list in several frames.
    let mut devices = Vec::new();
    let mut unexpected = None;
    client.call_streaming(Request::Devices, |response| {
        match response {
            Response::Devices(page) => devices.extend(page),
            other => unexpected = Some(other),
        }
        Ok(())
    })?;
    if let Some(other) = unexpected {
        return Err(client.unexpected(&other));
    }
    if json {
        print_json(&devices);
        return Ok(());
    }
    if devices.is_empty() {
        outln!("no devices registered");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = devices.iter().map(row).collect();
    print_table(
        &[
            "ID",
            "ADDR",
            "OBSERVED",
            "LAST SEEN",
            "LINK",
            "ENDPOINT",
            "RTT",
        ],
        &rows,
    );
    Ok(())
}

fn row(device: &DeviceEntry) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        device.id.clone(),
        device.addr.clone(),
        device.observed.clone(),
        device.last_seen.clone(),
        device.link.map_or_else(dash, link_name),
        device.endpoint.clone().unwrap_or_else(dash),
        device.rtt_ms.map_or_else(dash, |rtt| format!("{rtt:.1}ms")),
    ]
}

fn link_name(link: LinkState) -> String {
    match link {
        LinkState::Local => "self",
        LinkState::Connecting => "connecting",
        LinkState::Direct => "direct",
        LinkState::Relayed => "relayed",
        LinkState::Down => "down",
    }
    .to_owned()
}

/// Forgets a device and its key binding on the hub.
pub fn remove(client: &mut Client, id: String, json: bool) -> Result<(), CtlError> {
    let removed = match client.call(Request::DevicesRemove { device: id })? {
        Response::Removed(removed) => removed,
        other => return Err(client.unexpected(&other)),
    };
    if json {
        print_json(&removed);
        return Ok(());
    }
    let what = match (removed.was_registered, removed.had_binding) {
        (true, true) => "device and its key binding",
        (true, false) => "device",
        (false, _) => "key binding",
    };
    outln!("removed {} {what}", removed.device);
    Ok(())
}
