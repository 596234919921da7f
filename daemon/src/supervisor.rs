//! The supervisor owns every task: it binds all listeners, starts the roles,
//! signals readiness, runs reloads, and shuts everything down in order.
//!
//! Tasks: the roles' accept loops and workers, the control server and the
//! watchdog, all on one [`TaskTracker`] under one [`CancellationToken`]. The
//! supervisor itself is the main task, waiting for signals and reload requests.
//! It is, with the dispatcher, the only code that knows every role.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshd_ipc::ReloadReply;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat;
use crate::cluster;
use crate::config::{Config, ConfigLocation, ReloadPlan};
use crate::control::{
    self, ControlError, Dispatcher, NodeFacts, ReloadError, ReloadRequest, Roles,
};
use crate::key_file::{self, KeyError};
use crate::logging::LogControl;
use crate::mesh::{self, MeshError};
use crate::signaling;
use crate::signals::{Intent, Signals};
use crate::systemd;
use crate::web;

/// How long tasks get to finish after SIGTERM; systemd's stop timeout and the
/// contract's 5 s leave room for the rest of the exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// How often STATUS= is refreshed, so `systemctl status` shows current counts.
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// Why meshd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A role's listener could not be bound.
    #[error("binding {role} listener on {addr}: {source}{}", bind_hint(source))]
    Bind {
        /// The role.
        role: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The mesh role could not start.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// The hub's saved key bindings could not be read.
    #[error("signaling key bindings: {0}")]
    Bindings(#[from] signaling::BindingsError),
    /// The hub's own key could not be loaded or created.
    #[error("{0}")]
    HubKey(KeyError),
    /// The chat port's TLS certificate or key could not be loaded or made.
    #[error("chat tls: {0}")]
    ChatTls(#[from] chat::TlsError),
}

/// Maps a listener error to a [`StartError`] naming the role and address.
fn bind_failed(role: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Bind { role, addr, source }
}

fn bind_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another process holds that port: stop it or choose another address in the config"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need CAP_NET_BIND_SERVICE: choose a higher port"
        }
        std::io::ErrorKind::AddrNotAvailable => "; that address is not on this host",
        _ => "",
    }
}

/// Runs meshd until SIGTERM or SIGINT.
pub async fn run(
    config: Config,
    location: ConfigLocation,
    log: LogControl,
) -> Result<(), StartError> {
    let started = Instant::now();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut signals = Signals::install().map_err(StartError::Signals)?;

    // Bind everything before starting anything, so a bad address fails the
    // start cleanly and READY=1 means every listener is up.
    let signaling_listener = match config.signaling.enabled {
        true => Some(
            signaling::bind(&config.signaling)
                .await
                .map_err(bind_failed("signaling", config.signaling.listen))?,
        ),
        false => None,
    };
    let chat_listener = match config.chat.enabled {
        true => Some((
            chat::bind(&config.chat)
                .await
                .map_err(bind_failed("chat", config.chat.listen))?,
            chat::load_tls(&config.chat, &config.node.state_dir).await?,
        )),
        false => None,
    };
    let mesh_listener = match config.mesh.enabled {
        true => Some((
            mesh::bind(&config.mesh)
                .await
                .map_err(bind_failed("mesh", config.mesh.listen))?,
            mesh::load_identity(&config.node.state_dir).await?,
            mesh::load_known_hubs(&config.node.state_dir).await?,
        )),
        false => None,
    };
    let web_listener = match config.web.enabled {
        true => Some(
            web::bind(&config.web)
                .await
                .map_err(bind_failed("web", config.web.listen))?,
        ),
        false => None,
    };
    let control_listener = control::bind(&config.control.socket, &config.control.group)?;

    let signaling = match signaling_listener {
        Some(listener) => {
            let hub_key = key_file::load(&config.node.state_dir, key_file::HUB_KEY)
                .await
                .map_err(StartError::HubKey)?;
            let bindings = signaling::load_bindings(&config.node.state_dir).await?;
            Some(
                signaling::start(
                    &config.signaling,
                    listener,
                    hub_key,
                    bindings,
                    cancel.child_token(),
                    &tracker,
                )
                .map_err(bind_failed("signaling", config.signaling.listen))?,
            )
        }
        None => None,
    };
    let chat = match chat_listener {
        Some((listener, tls)) => Some(
            chat::start(
                &config.chat,
                &config.node.state_dir,
                listener,
                tls,
                cancel.child_token(),
                &tracker,
            )
            .await
            .map_err(bind_failed("chat", config.chat.listen))?,
        ),
        None => None,
    };
    let mesh = match mesh_listener {
        Some((listener, key, known_hubs)) => Some(
            mesh::start(
                &config.mesh,
                config.node.id.clone(),
                key,
                known_hubs,
                listener,
                signaling.as_ref().map(|_| mesh::LocalHub {
                    serves_others: !config.signaling.listen.ip().is_loopback(),
                }),
                cancel.child_token(),
                &tracker,
            )
            .await?,
        ),
        None => None,
    };
    // The cluster needs the hub (the config ensures there is one); the hub
    // keeps its changes for the cluster only when there is one.
    let cluster_hub = signaling.as_ref().filter(|_| config.cluster.enabled());
    let cluster = cluster_hub.and_then(|hub| {
        let me = cluster::Identity {
            id: config.node.id.to_string(),
            url: config
                .cluster
                .advertise
                .as_ref()
                .map(|url| url.as_written())
                .unwrap_or_default(),
            hub_key: hub.status().hub_key.unwrap_or_default(),
        };
        // Chat is shared only by a hub that runs it.
        let room = chat.as_ref().and_then(chat::ChatHandle::share);
        cluster::start(
            &config.cluster,
            me,
            hub.share(),
            room,
            cancel.child_token(),
            &tracker,
        )
    });
    if let Some(cluster) = &cluster {
        if let Some(hub) = &signaling {
            hub.join(std::sync::Arc::new(cluster.clone()));
        }
        if let Some(chat) = &chat {
            chat.join(std::sync::Arc::new(cluster.clone()));
        }
    }
    let mut roles = Roles {
        signaling,
        chat,
        mesh,
        web: None,
        cluster,
    };
    // The console shows the other roles, so it starts last, with them.
    roles.web = match web_listener {
        Some(listener) => Some(
            web::start(
                &config.web,
                listener,
                config.node.id.to_string(),
                roles.clone(),
                cancel.child_token(),
                &tracker,
            )
            .map_err(bind_failed("web", config.web.listen))?,
        ),
        None => None,
    };

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let facts = NodeFacts {
        id: config.node.id.clone(),
        started,
        config_file: config.file.clone(),
    };
    let dispatcher = Dispatcher::new(facts, roles.clone(), reload_tx);
    control::start(control_listener, dispatcher, cancel.child_token(), &tracker);
    systemd::spawn_watchdog(cancel.child_token(), &tracker);

    tracing::info!(
        node = %config.node.id,
        socket = %config.control.socket.display(),
        config = %config.file.as_ref().map_or("<built-in defaults>".into(), |p| p.display().to_string()),
        "meshd ready"
    );
    systemd::ready(&status_line(&roles));

    let mut running = config;
    let mut status_refresh = tokio::time::interval(STATUS_REFRESH);
    loop {
        tokio::select! {
            _ = status_refresh.tick() => systemd::status(&status_line(&roles)),
            intent = signals.next() => match intent {
                Intent::Reload => {
                    let _ = reload(&mut running, &location, &roles, &log).await;
                }
                Intent::Stop(signal) => {
                    tracing::info!(signal, "stopping");
                    break;
                }
            },
            Some(request) = reload_rx.recv() => {
                let outcome = reload(&mut running, &location, &roles, &log).await;
                let _ = request.reply.send(outcome);
            }
        }
    }

    systemd::stopping();
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "some connections did not finish in time; exiting anyway"
        );
    }
    tracing::info!("meshd stopped");
    Ok(())
}

/// Re-reads the config and applies what can change live. An invalid config
/// leaves the running one untouched.
async fn reload(
    running: &mut Config,
    location: &ConfigLocation,
    roles: &Roles,
    log: &LogControl,
) -> Result<ReloadReply, ReloadError> {
    systemd::reloading();
    let loaded = Config::load(location).and_then(|new| running.check_live(&new).map(|()| new));
    let outcome = match loaded {
        Ok(new) => {
            let mut plan = ReloadPlan::between(running, &new);
            if log.fixed_by_env() {
                // RUST_LOG wins over the config, so the level did not change.
                plan.applied.retain(|key| *key != "node.log_level");
            }
            running.apply_live(&new);
            log.set_level(running.node.log_level);
            if let Some(signaling) = &roles.signaling {
                signaling.apply(&running.signaling);
            }
            if let Some(chat) = &roles.chat {
                chat.apply(&running.chat);
            }
            if let Some(web) = &roles.web {
                web.apply(&running.web);
            }
            tracing::info!(
                applied = ?plan.applied,
                restart_required = ?plan.restart_required,
                "configuration reloaded"
            );
            if !plan.restart_required.is_empty() {
                tracing::warn!(keys = ?plan.restart_required, "some changed keys take effect only after a restart: systemctl restart meshd");
            }
            let mut warnings = Vec::new();
            if let Some(chat) = &roles.chat {
                match chat.reload_users().await {
                    Ok(count) => tracing::info!(users = count, "chat users reloaded"),
                    Err(error) => {
                        tracing::error!(%error, "chat users file invalid; keeping the last good set");
                        warnings.push(error.to_string());
                    }
                }
            }
            let reply = ReloadReply {
                warnings,
                config: new.file.as_ref().map(|p| p.display().to_string()),
                applied: plan.applied.iter().map(|k| (*k).to_owned()).collect(),
                restart_required: plan
                    .restart_required
                    .iter()
                    .map(|k| (*k).to_owned())
                    .collect(),
            };
            Ok(reply)
        }
        Err(error) => {
            tracing::error!(%error, "reload failed; keeping the running configuration");
            Err(ReloadError(error))
        }
    };
    systemd::ready(&status_line(roles));
    outcome
}

/// The STATUS= line: what is listening where.
fn status_line(roles: &Roles) -> String {
    let mut parts = Vec::new();
    if let Some(signaling) = &roles.signaling {
        let status = signaling.status();
        parts.push(format!(
            "signaling on {} ({} devices)",
            status.listen, status.devices
        ));
    }
    if let Some(chat) = &roles.chat {
        let status = chat.status();
        parts.push(format!(
            "chat on {} ({} clients)",
            status.listen, status.clients
        ));
    }
    if let Some(mesh) = &roles.mesh {
        let status = mesh.status();
        parts.push(format!(
            "mesh on {} ({} links)",
            status.listen, status.links
        ));
    }
    if let Some(web) = &roles.web {
        parts.push(format!("web console on {}", web.status().listen));
    }
    if parts.is_empty() {
        "running; no roles enabled".to_owned()
    } else {
        parts.join(", ")
    }
}
