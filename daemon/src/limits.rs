//! Process limits meshd adjusts at start.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the open-file limit to its hard maximum: every chat client, HTTP
/// connection and peer link is a descriptor, and the usual soft limit of
/// 1024 would cap the chat role far below `chat.max_clients`.
pub fn raise_open_files() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(
                from = soft,
                to = hard,
                "raised the open file limit (RLIMIT_NOFILE) to its hard limit"
            ),
            Err(error) => tracing::warn!(soft, hard, %error, "cannot raise the open file limit"),
        },
        Ok((soft, _)) => tracing::info!(
            limit = soft,
            "open file limit (RLIMIT_NOFILE) is at its hard limit"
        ),
        Err(error) => tracing::warn!(%error, "cannot read the open file limit"),
    }
}
