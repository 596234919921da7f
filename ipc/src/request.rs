//! Requests from meshctl to meshd, and who may send each of them.

use serde::{Deserialize, Serialize};

/// One request as it travels on the socket: a version, an id the reply echoes,
/// and the command itself flattened beside them:
/// `{"v":1,"id":7,"cmd":"devices_remove","device":"laptop"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Protocol version of the sender.
    pub v: u32,
    /// Chosen by the client; echoed in every reply frame.
    pub id: u64,
    /// The command.
    #[serde(flatten)]
    pub request: Request,
}

/// The envelope fields alone, decoded first so that a request with an unknown
/// command can still be answered under its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RequestHeader {
    /// Protocol version of the sender.
    pub v: u32,
    /// The request id.
    pub id: u64,
}

/// A command for the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Version, node id, roles and counters.
    Status,
    /// Every device this node knows.
    Devices,
    /// Forget a device and its key binding (hub).
    DevicesRemove {
        /// The device id to forget.
        device: String,
    },
    /// Re-read the configuration file, like SIGHUP, and answer once it is
    /// applied or rejected.
    Reload,
    /// List chat users.
    UsersList,
    /// Add a chat user.
    UsersAdd {
        /// User name.
        name: String,
        /// Password in clear; meshd stores only its argon2id hash.
        password: String,
    },
    /// Change a chat user's password.
    UsersPasswd {
        /// User name.
        name: String,
        /// New password in clear.
        password: String,
    },
    /// Remove a chat user.
    UsersRemove {
        /// User name.
        name: String,
    },
    /// Send `SYS <text>` to every chat client.
    Broadcast {
        /// The text.
        text: String,
    },
    /// Deliver a message over the mesh and answer once the device
    /// acknowledged it.
    Send {
        /// The device id.
        device: String,
        /// The message.
        text: String,
    },
    /// Deliver a message to every other device; one result per device.
    SendAll {
        /// The message.
        text: String,
    },
    /// The messages this node received over the mesh, oldest first.
    Messages {
        /// Keep the request open and stream each new message as it arrives.
        #[serde(default)]
        follow: bool,
    },
    /// Measure the round-trip time of the link to a device.
    Ping {
        /// The device id.
        device: String,
    },
    /// Probe the NAT in front of this device through its hubs.
    Netcheck,
    /// Drop the key pinned on first contact for a hub (`state_dir/known-hubs`),
    /// so the key it proves next is pinned instead.
    HubsForget {
        /// The hub's URL as `[mesh] signaling` writes it.
        url: String,
    },
}

/// What a caller must be allowed to do for a request to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Reads state only: anyone who can open the socket (the socket file's mode
    /// and group decide who can).
    Read,
    /// Changes state: root and the daemon's own user only.
    Write,
}

impl Request {
    /// The access level this request needs.
    ///
    /// One exhaustive match, so that a new command does not compile until
    /// someone decides who may run it.
    pub fn access(&self) -> Access {
        match self {
            Request::Status
            | Request::Devices
            | Request::UsersList
            | Request::Messages { .. }
            | Request::Ping { .. }
            | Request::Netcheck => Access::Read,
            Request::DevicesRemove { .. }
            | Request::Reload
            | Request::UsersAdd { .. }
            | Request::UsersPasswd { .. }
            | Request::UsersRemove { .. }
            | Request::Broadcast { .. }
            | Request::Send { .. }
            | Request::SendAll { .. }
            | Request::HubsForget { .. } => Access::Write,
        }
    }

    /// The command's name as meshctl users type it, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Devices => "devices",
            Request::DevicesRemove { .. } => "devices remove",
            Request::Reload => "reload",
            Request::UsersList => "users list",
            Request::UsersAdd { .. } => "users add",
            Request::UsersPasswd { .. } => "users passwd",
            Request::UsersRemove { .. } => "users remove",
            Request::Broadcast { .. } => "broadcast",
            Request::Send { .. } => "send",
            Request::SendAll { .. } => "send --all",
            Request::Messages { .. } => "messages",
            Request::Ping { .. } => "ping",
            Request::Netcheck => "netcheck",
            Request::HubsForget { .. } => "hubs forget",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form_is_flat() {
        let frame = RequestFrame {
            v: 1,
            id: 7,
            request: Request::DevicesRemove {
                device: "laptop".into(),
            },
        };
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"id":7,"cmd":"devices_remove","device":"laptop"}"#
        );
        let back: RequestFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn unknown_command_still_yields_header() {
        let line = r#"{"v":1,"id":9,"cmd":"launch_rockets"}"#;
        assert!(serde_json::from_str::<RequestFrame>(line).is_err());
        let header: RequestHeader = serde_json::from_str(line).unwrap();
        assert_eq!(header.id, 9);
    }

    #[test]
    fn mutating_commands_need_write_access() {
        assert_eq!(Request::Status.access(), Access::Read);
        assert_eq!(Request::Devices.access(), Access::Read);
        assert_eq!(Request::Reload.access(), Access::Write);
        let remove = Request::DevicesRemove { device: "x".into() };
        assert_eq!(remove.access(), Access::Write);
        assert_eq!(Request::UsersList.access(), Access::Read);
        let add = Request::UsersAdd {
            name: "a".into(),
            password: "p".into(),
        };
        assert_eq!(add.access(), Access::Write);
        let broadcast = Request::Broadcast { text: "t".into() };
        assert_eq!(broadcast.access(), Access::Write);
        let send = Request::Send {
            device: "d".into(),
            text: "t".into(),
        };
        assert_eq!(send.access(), Access::Write);
        assert_eq!(
            Request::SendAll { text: "t".into() }.access(),
            Access::Write
        );
        assert_eq!(Request::Messages { follow: true }.access(), Access::Read);
        assert_eq!(Request::Ping { device: "d".into() }.access(), Access::Read);
    }
}
