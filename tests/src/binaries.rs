//! Finds the `meshd` and `meshctl` binaries, building them once per test run.
//!
//! Integration tests live in their own package, so cargo does not build the
//! other packages' binaries for them. The first test that needs one runs
//! `cargo build -p meshd -p meshctl` in the same profile; cargo does not hold
//! its build lock while tests run, so this works under plain `cargo test`.
//! `MESHD_BIN` and `MESHCTL_BIN` override the paths (for testing installed
//! binaries).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

struct Binaries {
    meshd: PathBuf,
    meshctl: PathBuf,
}

fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        if let (Some(meshd), Some(meshctl)) = (
            std::env::var_os("MESHD_BIN"),
            std::env::var_os("MESHCTL_BIN"),
        ) {
            return Binaries {
                meshd: meshd.into(),
                meshctl: meshctl.into(),
            };
        }
        let exe = std::env::current_exe().expect("current test executable");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "--manifest-path",
            manifest,
            "-p",
            "meshd",
            "-p",
            "meshctl",
        ]);
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo build for meshd and meshctl");
        assert!(status.success(), "cargo build -p meshd -p meshctl failed");
        let binaries = Binaries {
            meshd: profile_dir.join("meshd"),
            meshctl: profile_dir.join("meshctl"),
        };
        assert!(
            binaries.meshd.exists(),
            "no meshd at {}",
            binaries.meshd.display()
        );
        assert!(
            binaries.meshctl.exists(),
            "no meshctl at {}",
            binaries.meshctl.display()
        );
        binaries
    })
}

/// Path of the `meshd` binary under test.
pub fn meshd_bin() -> PathBuf {
    binaries().meshd.clone()
}

/// Path of the `meshctl` binary under test.
pub fn meshctl_bin() -> PathBuf {
    binaries().meshctl.clone()
}
