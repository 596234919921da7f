//! Fault injection for the integration tests, compiled into debug builds
//! only: release builds (the .deb) have no fault points at all.
//!
//! `MESHD_FAULTS=point:subject[,point:subject...]` arms a point for one
//! subject; each armed point fires once per process. Points:
//!
//! - `peer-task-panic:ID`: the task that owns the link to device ID panics
//!   on its next `send`, to prove that a dead peer task is noticed and
//!   replaced (docs/mesh.md, "Failures").

/// Whether `point` is armed for `subject`; true at most once.
#[cfg(debug_assertions)]
pub fn fire(point: &str, subject: &str) -> bool {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static ARMED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("MESHD_FAULTS").unwrap_or_default();
        Mutex::new(
            spec.split(',')
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    });
    crate::sync::lock(armed).remove(&format!("{point}:{subject}"))
}

/// Release builds: no point is ever armed.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fire(_point: &str, _subject: &str) -> bool {
    false
}
