//! The config file: validation errors with file, line and key, and
//! `meshd --check-config`.

use std::fs;
use std::process::Command;
use std::time::Duration;

use meshd_tests::{Node, NodeOptions, meshctl_bin, meshd_bin};

fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(meshd_bin())
        .arg("--check-config")
        .arg("-c")
        .arg(path)
        .output()
        .expect("running meshd --check-config")
}

#[test]
fn check_config_prints_the_effective_config_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshd.toml");
    fs::write(
        &path,
        "[node]\nid = \"laptop\"\n\n[chat]\nmax_clients = 5\n",
    )
    .unwrap();
    let output = check_config(&path);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "id = \"laptop\"",
        "max_clients = 5",
        "listen = \"127.0.0.1:8080\"",
        "device_ttl = \"1m\"",
        "listen = \"0.0.0.0:8082\"",
        "signaling = [\"http://127.0.0.1:8080\"]",
        "max_line_bytes = 4096",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn every_config_problem_is_reported_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshd.toml");
    let text = "\
[node]
id = \"ok\"
colour = \"blue\"

[chat]
max_clients = \"many\"

[signaling]
listen = \"localhost:80\"
device_ttl = \"forever\"

[mesh]
signaling = [\"https://hub:443\"]
";
    fs::write(&path, text).unwrap();
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let file = path.display();
    for expected in [
        format!("{file}:3: node.colour: unknown key"),
        format!("{file}:6: chat.max_clients: expected an integer, found string"),
        format!("{file}:9: signaling.listen: \"localhost:80\" is not an address"),
        format!("{file}:10: signaling.device_ttl: \"forever\" is not a duration"),
        format!("{file}:13: mesh.signaling: \"https://hub:443\": only http://"),
    ] {
        assert!(
            stderr.contains(&expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
}

#[test]
fn a_malformed_hub_key_is_refused_with_its_line_and_a_good_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshd.toml");
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    fs::write(
        &path,
        format!("[mesh]\nsignaling = [\n  \"http://hub:8080#{key}\",\n  \"http://other:8080#not-a-key\",\n]\n"),
    )
    .unwrap();
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected = format!(
        "{}:2: mesh.signaling: \"http://other:8080#not-a-key\": the hub key after '#' is not a key (not base64",
        path.display()
    );
    assert!(
        stderr.contains(&expected),
        "{expected:?} missing from:\n{stderr}"
    );
    assert!(
        !stderr.contains("hub:8080#AQ"),
        "the good entry is not blamed: {stderr}"
    );
    // The good one alone passes, and the effective config keeps its pin.
    fs::write(
        &path,
        format!("[mesh]\nsignaling = [\"http://hub:8080#{key}\", \"http://hub:8080\"]\n"),
    )
    .unwrap();
    let output = check_config(&path);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("listed twice"), "{stderr}");
    fs::write(
        &path,
        format!("[mesh]\nsignaling = [\"http://hub:8080#{key}\"]\n"),
    )
    .unwrap();
    let output = check_config(&path);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(&format!("http://hub:8080#{key}")), "{text}");
}

#[test]
fn syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshd.toml");
    fs::write(&path, "[node]\nid = \"x\"\nstate_dir = /var/lib\n").unwrap();
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{}:3: invalid TOML", path.display())),
        "{stderr}"
    );
}

#[test]
fn meshd_with_an_invalid_config_exits_1_without_starting_anything() {
    let mut options = NodeOptions::default();
    options.signaling.push_str("max_connections = 0\n");
    let mut node = Node::spawn(options);
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(
        log.contains("signaling.max_connections: 0 is out of range"),
        "{log}"
    );
    assert!(
        log.contains("meshd --check-config"),
        "a hint is printed: {log}"
    );
    assert_eq!(node.notify().count("READY=1"), 0);
    assert!(!node.socket().exists(), "no control socket was created");
}

#[test]
fn an_explicit_config_path_must_exist() {
    let output = Command::new(meshd_bin())
        .args(["--check-config", "-c", "/nonexistent/meshd.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("cannot read config /nonexistent/meshd.toml"),
        "{stderr}"
    );
}

#[test]
fn without_a_config_file_meshd_uses_its_built_in_defaults() {
    // The default path is /etc/meshd/meshd.toml; on a machine without it the
    // built-in defaults apply, and either way the result is valid.
    let output = Command::new(meshd_bin())
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    if std::path::Path::new("/etc/meshd/meshd.toml").exists() {
        assert!(text.contains("from /etc/meshd/meshd.toml"), "{text}");
    } else {
        assert!(text.contains("from built-in defaults"), "{text}");
        assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
        assert!(
            text.contains("socket = \"/run/meshd/meshd.sock\"")
                || !nix::unistd::geteuid().is_root()
        );
    }
}

#[test]
fn both_binaries_print_their_version() {
    let version = env!("CARGO_PKG_VERSION");
    for (bin, name) in [(meshd_bin(), "meshd"), (meshctl_bin(), "meshctl")] {
        let output = Command::new(bin).arg("--version").output().unwrap();
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8(output.stdout).unwrap().trim(),
            format!("{name} {version}")
        );
    }
}

#[test]
fn the_shipped_example_config_is_valid_and_complete() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/meshd.toml");
    let output = check_config(std::path::Path::new(example));
    assert!(output.status.success(), "{output:?}");
    // Every key meshd knows is in the example, commented out or set.
    let text = fs::read_to_string(example).unwrap();
    let effective = String::from_utf8(output.stdout).unwrap();
    for line in effective.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            text.lines()
                .any(|l| l.trim_start_matches('#').starts_with(&format!("{key} = "))),
            "etc/meshd.toml lacks {key}"
        );
    }
}
