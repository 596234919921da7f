//! The peer state machine's promises (docs/mesh.md), to the millisecond on
//! a fake clock: the fallback to the relay, one relay per pair, the
//! coordinated hole-punch timing, the overlap before the relay closes,
//! resending on every path change, the tie-break, the backoff bounds.
//! The NAT lab (tests/) is the proof that the kernel agrees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use meshd_ipc::LinkState;
use meshd_link::Frame;
use tokio::time::Instant;

use super::super::error::{DialError, LinkDown, NoLinkReason, StopReason};
use super::super::hubs::{HubId, OpenHubs};
use super::super::path::Path;
use super::super::roster::Listing;
use super::SendError;
use super::events::{Action, CloseReason, DialId, Input, LinkFacts, LinkId, PeerEvent};
use super::links::prefer_new_link;
use super::state::{Entropy, PeerState, Setup};
use super::timers::Timer;
use crate::device_id::DeviceId;
use crate::hub_wire::{Refusable, Signal, ToHub};

type Acts = Vec<Action<u32, u32>>;

const LAN: &str = "10.0.0.2:8082";
const PUBLIC: &str = "203.0.113.2:40000";
const RELAY_HUB: &str = "203.0.113.1:8080";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn id(text: &str) -> DeviceId {
    DeviceId::parse(text).unwrap()
}

fn hub(index: usize) -> HubId {
    HubId::for_test(index)
}

fn listing(observed: &str) -> Listing {
    Listing {
        addr: addr(LAN),
        observed: observed.to_owned(),
        pubkey: None,
        last_seen: String::new(),
        endpoints: vec![addr(LAN)],
    }
}

/// A peer task of `me` for `peer`, two hubs open, jitter fixed at 1 so
/// every backoff wait is its base.
struct Harness {
    state: PeerState<u32, u32>,
    t0: Instant,
    hubs: OpenHubs,
}

impl Harness {
    /// alpha's task for beta: alpha is the smaller id.
    fn new() -> Harness {
        Harness::between("alpha", "beta")
    }

    /// beta's task for alpha: the larger id.
    fn larger() -> Harness {
        Harness::between("beta", "alpha")
    }

    fn between(me: &str, peer: &str) -> Harness {
        let t0 = Instant::now();
        let state = PeerState::new(
            t0,
            Setup {
                me: id(me),
                peer: id(peer),
                listing: listing(PUBLIC),
                entropy: Entropy::Fixed {
                    jitter: 1.0,
                    next_nonce: 100,
                },
            },
        );
        Harness {
            state,
            t0,
            hubs: OpenHubs::of(&[hub(0), hub(1)]),
        }
    }

    fn no_hubs(mut self) -> Harness {
        self.hubs = OpenHubs::default();
        self
    }

    fn t(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn at(&mut self, ms: u64, input: Input<u32, u32>) -> Acts {
        let mut out = Vec::new();
        let now = self.t(ms);
        self.state.handle(now, &self.hubs, input, &mut out);
        out
    }

    fn tick(&mut self, ms: u64) -> Acts {
        self.at(ms, Input::Timeout)
    }

    /// When the state machine wants to be woken next, in ms from t0.
    fn wake(&self) -> Option<u64> {
        self.state
            .poll_timeout()
            .map(|at| at.duration_since(self.t0).as_millis() as u64)
    }

    /// When `timer` fires, in ms from t0, if it is live.
    fn timer(&self, timer: Timer) -> Option<u64> {
        self.state
            .timer_live(timer)
            .map(|at| at.duration_since(self.t0).as_millis() as u64)
    }

    fn facts(endpoint: &str, path: Path, instance: u64, dialled: bool) -> LinkFacts {
        LinkFacts {
            instance,
            dialled,
            endpoint: addr(endpoint),
            path,
        }
    }

    fn direct_up(&mut self, ms: u64, link: u64) -> Acts {
        let facts = Harness::facts(LAN, Path::Direct, 7, true);
        self.at(
            ms,
            Input::Arrived {
                link: LinkId(link),
                facts,
            },
        )
    }

    fn relayed_up(&mut self, ms: u64, link: u64) -> Acts {
        let facts = Harness::facts(RELAY_HUB, Path::Relayed, 7, true);
        self.at(
            ms,
            Input::Relayed {
                outcome: Ok((LinkId(link), facts)),
            },
        )
    }

    /// `link` ended at `ms`.
    fn lose(&mut self, ms: u64, link: u64, reason: LinkDown) -> Acts {
        self.at(
            ms,
            Input::LinkDown {
                link: LinkId(link),
                reason,
            },
        )
    }

    /// An answer (to any ping) came on `link` at `ms`.
    fn pong(&mut self, ms: u64, link: u64) -> Acts {
        self.at(
            ms,
            Input::Pong {
                link: LinkId(link),
                nonce: 0,
            },
        )
    }

    fn send(&mut self, ms: u64, message: u64, tag: u32) -> Acts {
        self.at(
            ms,
            Input::Send {
                id: message,
                text: Bytes::from_static(b"hi"),
                reply: tag,
            },
        )
    }
}

/// Round `dial` found nothing to dial.
fn failed_round(dial: u64) -> Input<u32, u32> {
    Input::Dialled {
        dial: DialId(dial),
        outcome: Err(DialError::NoEndpoint),
    }
}

fn dials(acts: &Acts) -> Vec<(DialId, Vec<SocketAddr>, Option<SocketAddr>, Duration)> {
    acts.iter()
        .filter_map(|act| match act {
            Action::Dial {
                dial,
                candidates,
                public,
                public_wait,
            } => Some((*dial, candidates.clone(), *public, *public_wait)),
            _ => None,
        })
        .collect()
}

fn to_hub(acts: &Acts) -> Vec<(HubId, ToHub)> {
    acts.iter()
        .filter_map(|act| match act {
            Action::ToHub { hub, message } => Some((*hub, message.clone())),
            _ => None,
        })
        .collect()
}

fn relay_requests(acts: &Acts) -> Vec<HubId> {
    to_hub(acts)
        .into_iter()
        .filter(|(_, message)| matches!(message, ToHub::Relay { .. }))
        .map(|(hub, _)| hub)
        .collect()
}

fn messages_on(acts: &Acts, link: u64) -> Vec<u64> {
    acts.iter()
        .filter_map(|act| match act {
            Action::Write {
                link: on,
                frame: Frame::Message { id, .. },
            } if *on == LinkId(link) => Some(*id),
            _ => None,
        })
        .collect()
}

fn pings_on(acts: &Acts, link: u64) -> usize {
    acts.iter()
        .filter(|act| {
            matches!(act, Action::Write { link: on, frame: Frame::Ping { .. } } if *on == LinkId(link))
        })
        .count()
}

fn closed(acts: &Acts) -> Vec<(u64, String)> {
    acts.iter()
        .filter_map(|act| match act {
            Action::CloseLink { link, reason } => Some((link.0, reason.to_string())),
            _ => None,
        })
        .collect()
}

fn sends_done(acts: &Acts) -> Vec<(u32, Result<Duration, String>)> {
    acts.iter()
        .filter_map(|act| match act {
            Action::SendDone { reply, outcome } => Some((
                *reply,
                outcome.as_ref().map_err(ToString::to_string).copied(),
            )),
            _ => None,
        })
        .collect()
}

fn public() -> Option<SocketAddr> {
    Some(addr(PUBLIC))
}

const LONG_WAIT: Duration = Duration::from_secs(25);

// --- Dialling and hole punching ----------------------------------------

#[test]
fn a_new_task_dials_at_once_and_asks_the_peer_to_dial_back() {
    let mut h = Harness::new();
    assert_eq!(h.wake(), Some(0));
    let acts = h.tick(0);
    let round = dials(&acts);
    assert_eq!(round.len(), 1);
    // The public endpoint waits for the coordinated moment.
    assert_eq!((round[0].1.clone(), round[0].2), (vec![addr(LAN)], None));
    assert_eq!(
        to_hub(&acts),
        [(
            hub(0),
            ToHub::Signal {
                to: "beta".into(),
                signal: Signal::Connect { nonce: 100 }
            }
        )]
    );
    assert_eq!(h.state.view().state, LinkState::Connecting);
}

#[test]
fn a_device_seen_at_its_own_address_is_dialled_at_once_with_no_punch() {
    // The hub observes it where it says it is: no NAT in between, nothing
    // to coordinate (on a LAN, or with a public address).
    let t0 = Instant::now();
    let mut state: PeerState<u32, u32> = PeerState::new(
        t0,
        Setup {
            me: id("alpha"),
            peer: id("beta"),
            listing: listing(LAN),
            entropy: Entropy::Fixed {
                jitter: 1.0,
                next_nonce: 100,
            },
        },
    );
    let mut out = Vec::new();
    state.handle(t0, &OpenHubs::of(&[hub(0)]), Input::Timeout, &mut out);
    let acts: Acts = out;
    let round = dials(&acts);
    assert_eq!(round.len(), 1);
    assert_eq!((round[0].1.clone(), round[0].2), (vec![addr(LAN)], None));
    assert!(to_hub(&acts).is_empty(), "no hole punching requested");
}

#[test]
fn without_an_open_hub_the_public_endpoint_is_dialled_at_once_with_the_long_wait() {
    let mut h = Harness::new().no_hubs();
    let round = dials(&h.tick(0));
    assert_eq!(round.len(), 1);
    assert_eq!(round[0].2, public());
    assert_eq!(round[0].3, LONG_WAIT);
}

#[test]
fn the_coordinated_dial_leaves_half_a_round_trip_after_the_reply() {
    let mut h = Harness::new();
    h.tick(0);
    // ConnectReply 80 ms after Connect: Sync at once through the same hub,
    // our dial 40 ms later, when the Sync reaches the peer.
    let acts = h.at(
        80,
        Input::Signal {
            hub: hub(0),
            signal: Signal::ConnectReply { nonce: 100 },
        },
    );
    assert_eq!(
        to_hub(&acts),
        [(
            hub(0),
            ToHub::Signal {
                to: "beta".into(),
                signal: Signal::Sync { nonce: 100 }
            }
        )]
    );
    assert!(dials(&acts).is_empty());
    assert_eq!(h.wake(), Some(120));
    assert!(dials(&h.tick(119)).is_empty());
    let round = dials(&h.tick(120));
    assert_eq!(round.len(), 1);
    assert_eq!((round[0].1.is_empty(), round[0].2), (true, public()));
}

#[test]
fn a_reply_to_another_request_is_ignored() {
    let mut h = Harness::new();
    h.tick(0);
    let acts = h.at(
        80,
        Input::Signal {
            hub: hub(0),
            signal: Signal::ConnectReply { nonce: 99 },
        },
    );
    assert!(acts.is_empty());
}

#[test]
fn a_sync_from_the_peer_dials_its_public_endpoint_at_once() {
    let mut h = Harness::new();
    h.tick(0);
    let acts = h.at(
        50,
        Input::Signal {
            hub: hub(1),
            signal: Signal::Sync { nonce: 5 },
        },
    );
    let round = dials(&acts);
    assert_eq!(
        (round.len(), round[0].2, round[0].3),
        (1, public(), LONG_WAIT)
    );
    // A second Sync while that dial waits adds nothing.
    let again = h.at(
        60,
        Input::Signal {
            hub: hub(1),
            signal: Signal::Sync { nonce: 5 },
        },
    );
    assert!(dials(&again).is_empty());
}

#[test]
fn a_connect_from_the_peer_is_answered_through_its_hub_even_with_a_direct_link() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(10, 1);
    let acts = h.at(
        20,
        Input::Signal {
            hub: hub(1),
            signal: Signal::Connect { nonce: 7 },
        },
    );
    assert_eq!(
        to_hub(&acts),
        [(
            hub(1),
            ToHub::Signal {
                to: "beta".into(),
                signal: Signal::ConnectReply { nonce: 7 }
            }
        )]
    );
}

#[test]
fn an_unanswered_punch_request_dials_the_public_endpoint_after_2s() {
    let mut h = Harness::new();
    h.tick(0);
    h.tick(300); // the relay request
    assert!(dials(&h.tick(1999)).is_empty());
    let round = dials(&h.tick(2000));
    assert_eq!(
        (round.len(), round[0].2, round[0].3),
        (1, public(), LONG_WAIT)
    );
}

#[test]
fn a_refused_punch_request_dials_the_public_endpoint_at_once() {
    let mut h = Harness::new();
    h.tick(0);
    let acts = h.at(
        30,
        Input::Refused {
            hub: hub(0),
            request: Refusable::Signal,
            reason: "beta has no channel here".into(),
        },
    );
    assert_eq!(dials(&acts)[0].2, public());
}

#[test]
fn a_connect_no_hub_can_take_goes_round_the_hubs_then_dials_anyway() {
    let mut h = Harness::new();
    let connect = |nonce| ToHub::Signal {
        to: "beta".into(),
        signal: Signal::Connect { nonce },
    };
    h.tick(0);
    let acts = h.at(
        0,
        Input::HubSendFailed {
            hub: hub(0),
            message: connect(100),
        },
    );
    assert_eq!(to_hub(&acts), [(hub(1), connect(100))]);
    let acts = h.at(
        0,
        Input::HubSendFailed {
            hub: hub(1),
            message: connect(100),
        },
    );
    assert!(to_hub(&acts).is_empty());
    assert_eq!(dials(&acts)[0].2, public());
}

#[test]
fn a_direct_link_stops_dialling_punching_and_the_relay_request() {
    let mut h = Harness::new();
    h.tick(0);
    let acts = h.direct_up(100, 1);
    assert!(matches!(acts[0], Action::StartLink { link } if link == LinkId(1)));
    assert!(acts.iter().any(|act| matches!(
        act,
        Action::Log(PeerEvent::LinkUp {
            path: Path::Direct,
            ..
        })
    )));
    // A first ping at once, for the RTT.
    assert_eq!(pings_on(&acts, 1), 1);
    // Only the first ping's deadline and the idle keepalive are left.
    assert_eq!(h.wake(), Some(5100));
    assert_eq!(h.timer(Timer::Keepalive), Some(25_000));
    let acts = h.tick(5100);
    assert!(dials(&acts).is_empty() && to_hub(&acts).is_empty());
    assert_eq!(h.state.view().state, LinkState::Direct);
}

#[test]
fn a_listing_that_moved_is_dialled_at_once() {
    let mut h = Harness::new();
    h.tick(0);
    let failed = failed_round(1);
    h.at(100, failed);
    // The round failed: the next one is 250 ms away.
    assert_eq!(h.wake(), Some(300));
    let mut moved = listing(PUBLIC);
    moved.endpoints = vec![addr("10.0.0.9:8082")];
    h.at(150, Input::Listing(moved));
    assert_eq!(h.wake(), Some(150));
    let round = dials(&h.tick(150));
    assert_eq!(round[0].1, [addr("10.0.0.9:8082"), addr(LAN)]);
}

// --- Backoff bounds ------------------------------------------------------

#[test]
fn failed_rounds_back_off_from_250ms_doubling_to_30s() {
    let mut h = Harness::new().no_hubs();
    let mut now = 0;
    let mut waits = Vec::new();
    for round in 1..=10u64 {
        h.tick(now);
        let failed = failed_round(round);
        h.at(now + 1, failed);
        let next = h.timer(Timer::Redial).unwrap();
        waits.push(next - (now + 1));
        now = next;
    }
    assert_eq!(
        waits,
        [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    );
}

#[test]
fn a_round_that_waited_the_full_punch_time_is_followed_at_once() {
    let mut h = Harness::new().no_hubs();
    let fail = |h: &mut Harness, round: u64, after: u64| {
        let at = h.timer(Timer::Redial).unwrap();
        h.tick(at);
        let failed = failed_round(round);
        h.at(at + after, failed);
        at + after
    };
    // Three quick failures raise the backoff (250, 500, 1000 ms)...
    for round in 1..=3 {
        fail(&mut h, round, 1);
    }
    // ...but a round whose public dial waited its 25 s resets it.
    let failed_at = fail(&mut h, 4, 25_000);
    assert_eq!(h.timer(Timer::Redial), Some(failed_at + 250));
}

#[test]
fn relay_requests_back_off_from_500ms_doubling_to_15s() {
    let mut h = Harness::new();
    h.tick(0);
    let mut now = h.wake().unwrap();
    assert_eq!(now, 300);
    let mut waits = Vec::new();
    for _ in 0..7 {
        let acts = h.tick(now);
        let asked = relay_requests(&acts);
        assert_eq!(asked.len(), 1, "asked at {now}");
        let refused = Input::Refused {
            hub: asked[0],
            request: Refusable::Relay,
            reason: "no".into(),
        };
        h.at(now, refused);
        let next = relay_wake(&h, now);
        waits.push(next - now);
        now = next;
    }
    assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 15000, 15000]);
}

/// When the next relay request is due, in ms from t0.
fn relay_wake(h: &Harness, _now: u64) -> u64 {
    let at = h
        .state
        .timers
        .at(Timer::RelayAsk)
        .expect("a relay request is due");
    at.duration_since(h.t0).as_millis() as u64
}

// --- The relay ------------------------------------------------------------

#[test]
fn the_smaller_id_asks_for_a_relay_after_300ms_the_larger_after_900ms() {
    let mut smaller = Harness::new();
    smaller.tick(0);
    assert_eq!(smaller.wake(), Some(300));
    assert_eq!(relay_requests(&smaller.tick(300)), [hub(0)]);

    let mut larger = Harness::larger();
    larger.tick(0);
    assert!(relay_requests(&larger.tick(300)).is_empty());
    assert_eq!(larger.wake(), Some(900));
    assert_eq!(relay_requests(&larger.tick(900)), [hub(0)]);
}

#[test]
fn an_offer_is_joined_whoever_asked_so_the_pair_gets_one_relay() {
    let mut h = Harness::larger();
    h.tick(0);
    // The smaller id asked first: its offer reaches us before our 900 ms.
    let offer = |token: &str| Input::RelayOffer {
        hub: hub(0),
        token: token.into(),
        dial: false,
        at: None,
    };
    let acts = h.at(400, offer("t1"));
    assert!(
        matches!(&acts[..], [Action::JoinRelay { hub: via, token, dial: false, at: None }] if *via == hub(0) && token == "t1")
    );
    // Joining: no request of our own, and a second offer is not joined.
    assert!(relay_requests(&h.tick(900)).is_empty());
    assert!(h.at(950, offer("t2")).is_empty());
    assert_eq!(h.state.view().state, LinkState::Connecting);
}

#[test]
fn an_unanswered_relay_request_is_asked_again_after_5s_and_the_backoff() {
    let mut h = Harness::new();
    h.tick(0);
    h.tick(300);
    // 5 s without an offer: again after 500 ms.
    h.tick(5300);
    assert_eq!(relay_requests(&h.tick(5799)), Vec::<HubId>::new());
    assert_eq!(relay_requests(&h.tick(5800)), [hub(0)]);
}

#[test]
fn a_refused_relay_request_goes_round_to_the_next_hub() {
    let mut h = Harness::new();
    h.tick(0);
    assert_eq!(relay_requests(&h.tick(300)), [hub(0)]);
    let acts = h.at(
        310,
        Input::Refused {
            hub: hub(0),
            request: Refusable::Relay,
            reason: "relay slots full".into(),
        },
    );
    assert!(
        acts.iter()
            .any(|act| matches!(act, Action::Log(PeerEvent::RelayRefused { .. })))
    );
    assert_eq!(relay_requests(&h.tick(810)), [hub(1)]);
    // And a send meanwhile names the hub's reason.
    assert!(matches!(
        h.state.last_error,
        Some(NoLinkReason::RelayRefused(ref reason)) if reason == "relay slots full"
    ));
}

#[test]
fn a_relay_request_no_hub_can_take_waits_for_the_backoff() {
    let mut h = Harness::new();
    h.tick(0);
    h.tick(300);
    for index in [0, 1] {
        let acts = h.at(
            300,
            Input::HubSendFailed {
                hub: hub(index),
                message: ToHub::Relay { to: "beta".into() },
            },
        );
        let expected: Vec<HubId> = if index == 0 { vec![hub(1)] } else { vec![] };
        assert_eq!(relay_requests(&acts), expected);
    }
    assert_eq!(relay_requests(&h.tick(800)), [hub(0)]);
}

// --- Losing a link and moving between paths -----------------------------

#[test]
fn a_dead_direct_link_falls_back_to_the_relay_at_once_for_the_smaller_id() {
    let mut h = Harness::new();
    h.tick(0);
    // The first round brings the direct link.
    let facts = Harness::facts(LAN, Path::Direct, 7, true);
    h.at(
        100,
        Input::Dialled {
            dial: DialId(1),
            outcome: Ok((LinkId(1), facts)),
        },
    );
    let acts = h.lose(8000, 1, LinkDown::Silent);
    assert_eq!(closed(&acts), [(1, "silent for 6s".to_owned())]);
    assert_eq!(h.timer(Timer::RelayAsk), Some(8000));
    let acts = h.tick(8000);
    assert_eq!(relay_requests(&acts), [hub(0)]);
    // The direct path is dialled again 250 ms after the loss.
    assert_eq!(dials(&h.tick(8250)).len(), 1);
}

#[test]
fn a_dead_direct_link_falls_back_600ms_later_for_the_larger_id() {
    let mut h = Harness::larger();
    h.tick(0);
    h.direct_up(100, 1);
    h.lose(8000, 1, LinkDown::Silent);
    assert!(relay_requests(&h.tick(8599)).is_empty());
    assert_eq!(relay_requests(&h.tick(8600)), [hub(0)]);
}

#[test]
fn unacknowledged_messages_go_again_on_the_relay_with_one_more_answer_time() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1);
    assert_eq!(messages_on(&h.send(1000, 41, 1), 1), [41]);
    // The direct path dies at 4 s: the message's deadline (6 s) moves to
    // 9 s rather than failing while the relay is being set up.
    h.lose(4000, 1, LinkDown::Silent);
    assert!(sends_done(&h.tick(6000)).is_empty());
    let acts = h.relayed_up(7000, 2);
    assert_eq!(messages_on(&acts, 2), [41]);
    let acts = h.at(
        7040,
        Input::Ack {
            link: LinkId(2),
            id: 41,
        },
    );
    assert_eq!(sends_done(&acts), [(1, Ok(Duration::from_millis(6040)))]);
}

#[test]
fn a_direct_link_takes_over_from_the_relay_and_the_relay_closes_5s_later() {
    let mut h = Harness::new();
    h.tick(0);
    h.relayed_up(500, 2);
    h.send(600, 9, 1);
    // The direct link arrives: the message goes again on it at once.
    let acts = h.direct_up(1000, 1);
    assert_eq!(messages_on(&acts, 1), [9]);
    assert!(closed(&acts).is_empty(), "the relay stands by");
    // Heard within the last 4 s at 6 s: the relayed link closes then.
    h.at(
        3000,
        Input::Pong {
            link: LinkId(1),
            nonce: 1,
        },
    );
    assert!(closed(&h.tick(5999)).is_empty());
    let acts = h.tick(6000);
    assert_eq!(closed(&acts), [(2, "moved to a direct path".to_owned())]);
    assert!(
        acts.iter()
            .any(|act| matches!(act, Action::Log(PeerEvent::MovedToDirect { .. })))
    );
}

#[test]
fn a_direct_link_not_heard_keeps_the_relay_and_is_looked_at_every_2s() {
    let mut h = Harness::new();
    h.tick(0);
    h.relayed_up(500, 2);
    h.direct_up(1000, 1);
    // The relay answers; nothing heard on the direct link since it came up
    // at 1 s, so the relay stays.
    h.pong(5000, 2);
    assert!(closed(&h.tick(6000)).is_empty());
    h.at(
        6500,
        Input::Ack {
            link: LinkId(1),
            id: 0,
        },
    );
    assert!(closed(&h.tick(7999)).is_empty());
    assert_eq!(
        closed(&h.tick(8000)),
        [(2, "moved to a direct path".to_owned())]
    );
}

#[test]
fn losing_the_direct_link_moves_to_the_standing_relay_and_resends() {
    let mut h = Harness::new();
    h.tick(0);
    h.relayed_up(500, 2);
    h.direct_up(1000, 1);
    h.send(1100, 5, 1);
    let acts = h.lose(2000, 1, LinkDown::WriteQueueFull);
    assert!(
        acts.iter()
            .any(|act| matches!(act, Action::Log(PeerEvent::MovedToRelayed)))
    );
    assert_eq!(messages_on(&acts, 2), [5]);
    assert_eq!(h.state.view().state, LinkState::Relayed);
}

#[test]
fn a_lost_relayed_link_with_nothing_else_asks_again_after_the_backoff() {
    let mut h = Harness::new();
    h.tick(0);
    h.relayed_up(500, 2);
    h.lose(3000, 2, LinkDown::ClosedByPeer);
    assert!(relay_requests(&h.tick(3499)).is_empty());
    assert_eq!(relay_requests(&h.tick(3500)), [hub(0)]);
}

// --- The tie-break ------------------------------------------------------

#[test]
fn crossing_dials_keep_the_link_the_smaller_id_dialled_at_both_ends() {
    let a = id("alpha");
    let b = id("beta");
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_millis(3);
    // At alpha: its own dial finished first, beta's arrived next.
    assert!(!prefer_new_link((7, &a, t0), (7, &b, t1)));
    // At beta: its own dial finished first, alpha's arrived next.
    assert!(prefer_new_link((7, &b, t0), (7, &a, t1)));
}

#[test]
fn a_restarted_or_reconnecting_peer_replaces_the_old_link() {
    let a = id("alpha");
    let b = id("beta");
    let t0 = Instant::now();
    assert!(prefer_new_link((7, &a, t0), (8, &b, t0)));
    let later = t0 + Duration::from_millis(2001);
    assert!(prefer_new_link((7, &a, t0), (7, &b, later)));
    assert!(!prefer_new_link(
        (7, &a, t0),
        (7, &b, t0 + Duration::from_millis(2000))
    ));
}

#[test]
fn the_state_machine_applies_the_tie_break_within_a_path() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1); // alpha dialled it
    // beta's crossing dial, 3 ms later: refused, the first link stays.
    let theirs = Harness::facts(LAN, Path::Direct, 7, false);
    let acts = h.at(
        103,
        Input::Arrived {
            link: LinkId(2),
            facts: theirs,
        },
    );
    assert!(
        matches!(&acts[..], [Action::Log(PeerEvent::DuplicateClosed { .. }), Action::RejectLink { link }] if *link == LinkId(2))
    );
    // beta restarted (a new instance): its link replaces ours.
    let restarted = Harness::facts(LAN, Path::Direct, 8, false);
    let acts = h.at(
        500,
        Input::Arrived {
            link: LinkId(3),
            facts: restarted,
        },
    );
    assert_eq!(closed(&acts), [(1, "replaced by a newer link".to_owned())]);
    assert!(
        acts.iter()
            .any(|act| matches!(act, Action::StartLink { link } if *link == LinkId(3)))
    );
}

// --- Messages, pings, deadlines -------------------------------------------

#[test]
fn a_message_waits_for_a_link_and_goes_out_when_one_comes() {
    let mut h = Harness::new();
    h.tick(0);
    assert!(messages_on(&h.send(10, 1, 1), 1).is_empty());
    assert_eq!(messages_on(&h.direct_up(50, 1), 1), [1]);
}

#[test]
fn a_send_without_a_link_dials_now_and_asks_for_the_relay_within_the_head_start() {
    let mut h = Harness::new().no_hubs();
    h.tick(0);
    h.at(1, failed_round(1));
    assert_eq!(h.wake(), Some(251));
    h.hubs = OpenHubs::of(&[hub(0)]);
    h.send(100, 1, 1);
    assert_eq!(h.wake(), Some(100));
    let acts = h.tick(100);
    assert_eq!(dials(&acts).len(), 1);
}

#[test]
fn a_send_gets_timeout_with_a_link_and_the_last_error_without() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(10, 1);
    h.send(100, 1, 1);
    assert!(sends_done(&h.tick(5099)).is_empty());
    assert_eq!(
        sends_done(&h.tick(5100)),
        [(1, Err("beta did not acknowledge within 5s".to_owned()))]
    );

    let mut h = Harness::new();
    h.tick(0);
    h.send(100, 2, 2);
    assert_eq!(
        sends_done(&h.tick(5100)),
        [(2, Err("no link to beta: not connected yet".to_owned()))]
    );
}

#[test]
fn with_no_hub_a_failed_round_fails_waiting_messages_at_once_with_its_errors() {
    let mut h = Harness::new().no_hubs();
    h.tick(0);
    h.send(10, 1, 1);
    let acts = h.at(20, failed_round(1));
    assert_eq!(
        sends_done(&acts),
        [(
            1,
            Err("no link to beta: the device advertises no endpoint".to_owned())
        )]
    );
}

#[test]
fn more_than_256_messages_in_flight_are_refused_as_busy() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(10, 1);
    for message in 0..256 {
        assert!(sends_done(&h.send(20, message, 0)).is_empty());
    }
    assert_eq!(
        sends_done(&h.send(20, 256, 9)),
        [(
            9,
            Err("too many requests to beta are awaiting an answer; try again".to_owned())
        )]
    );
}

#[test]
fn a_ping_reports_the_round_trip_and_path_and_sets_the_rtt() {
    let mut h = Harness::new();
    h.tick(0);
    h.relayed_up(10, 2);
    let acts = h.at(100, Input::Ping { reply: 4 });
    let nonce = acts
        .iter()
        .find_map(|act| match act {
            Action::Write {
                frame: Frame::Ping { nonce },
                ..
            } => Some(*nonce),
            _ => None,
        })
        .unwrap();
    let acts = h.at(
        103,
        Input::Pong {
            link: LinkId(2),
            nonce,
        },
    );
    let Action::PingDone {
        reply: 4,
        outcome: Ok(outcome),
    } = &acts[0]
    else {
        panic!("{acts:?}");
    };
    assert_eq!(outcome.rtt, Duration::from_millis(3));
    assert_eq!(outcome.path, LinkState::Relayed);
    assert_eq!(h.state.view().rtt, Some(Duration::from_millis(3)));
}

#[test]
fn a_ping_without_a_link_fails_at_once() {
    let mut h = Harness::new();
    let acts = h.at(0, Input::Ping { reply: 1 });
    assert!(matches!(
        &acts[..],
        [Action::PingDone {
            reply: 1,
            outcome: Err(SendError::NoLink { .. })
        }]
    ));
}

#[test]
fn every_link_of_a_peer_in_use_is_pinged_every_2s() {
    let mut h = Harness::new();
    h.tick(0);
    h.relayed_up(500, 2);
    // Two paths at once put the peer in use: pings every 2 s from then.
    h.direct_up(900, 1);
    assert_eq!(h.timer(Timer::Keepalive), Some(2900));
    let acts = h.tick(2900);
    assert_eq!((pings_on(&acts, 1), pings_on(&acts, 2)), (1, 1));
    assert_eq!(h.timer(Timer::Keepalive), Some(4900));
    let acts = h.tick(4900);
    assert_eq!((pings_on(&acts, 1), pings_on(&acts, 2)), (1, 1));
}

#[test]
fn stopping_closes_every_link_and_answers_everything_waiting() {
    let mut h = Harness::new();
    h.tick(0);
    h.relayed_up(10, 2);
    h.direct_up(20, 1);
    h.send(30, 1, 1);
    let acts = h.at(40, Input::Stop(StopReason::MeshdStopping));
    let mut links: Vec<u64> = closed(&acts).into_iter().map(|(link, _)| link).collect();
    links.sort();
    assert_eq!(links, [1, 2]);
    assert!(acts.iter().all(|act| !matches!(act, Action::CloseLink { reason, .. } if !matches!(reason, CloseReason::Stopping(_)))));
    assert_eq!(
        sends_done(&acts),
        [(
            1,
            Err("the link to beta was closed: meshd is stopping".to_owned())
        )]
    );
}

#[test]
fn the_view_says_connecting_while_trying_and_down_when_idle() {
    let mut h = Harness::new().no_hubs();
    assert_eq!(h.state.view().state, LinkState::Down);
    h.tick(0);
    assert_eq!(h.state.view().state, LinkState::Connecting);
    h.at(5, failed_round(1));
    assert_eq!(h.state.view().state, LinkState::Down);
    h.direct_up(10, 1);
    let view = h.state.view();
    assert_eq!(
        (view.state, view.endpoint),
        (LinkState::Direct, Some(addr(LAN)))
    );
}

#[test]
fn an_idle_peer_is_pinged_every_25s_and_every_2s_for_30s_after_a_send() {
    let mut h = Harness::new();
    h.tick(0);
    // A new link is pinged at once (its RTT), then at the idle pace of
    // the peer's keepalive, due every 25 s from the task's start.
    let acts = h.direct_up(100, 1);
    assert_eq!(pings_on(&acts, 1) + pings_on(&h.tick(100), 1), 1);
    h.pong(101, 1);
    for ms in [25_000, 50_000] {
        assert_eq!(pings_on(&h.tick(ms - 1), 1), 0);
        assert_eq!(pings_on(&h.tick(ms), 1), 1, "at {ms} ms");
        h.pong(ms + 1, 1);
    }
    // A send puts the peer in use: a ping 2 s later, then every 2 s, each
    // answered, until 30 s after the send.
    let acts = h.send(60_000, 7, 1);
    assert_eq!(messages_on(&acts, 1), [7]);
    assert_eq!(pings_on(&h.tick(60_000), 1), 0);
    h.at(
        60_005,
        Input::Ack {
            link: LinkId(1),
            id: 7,
        },
    );
    let mut ms = 62_000;
    while ms <= 88_000 {
        assert_eq!(pings_on(&h.tick(ms), 1), 1, "at {ms} ms");
        h.pong(ms + 1, 1);
        ms += 2000;
    }
    // 30 s after the send the peer is idle again: the next ping is the
    // last in-use one's 25 s later.
    assert_eq!(pings_on(&h.tick(90_000), 1), 1);
    assert_eq!(pings_on(&h.tick(114_999), 1), 0);
    assert_eq!(pings_on(&h.tick(115_000), 1), 1);
    assert!(
        closed(&h.tick(115_000)).is_empty(),
        "an idle link is never judged silent here"
    );
}

#[test]
fn a_dead_link_is_noticed_6s_into_its_use_however_long_it_was_quiet() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1);
    // Quiet for a minute, nothing heard: an idle link is not judged.
    for ms in [25_000, 50_000] {
        assert!(closed(&h.tick(ms)).is_empty());
    }
    // Used at 60 s over a path that died meanwhile: no ack, no pong.
    h.send(60_000, 7, 1);
    for ms in [62_000, 64_000] {
        let acts = h.tick(ms);
        assert_eq!(pings_on(&acts, 1), 1, "at {ms} ms");
        assert!(closed(&acts).is_empty(), "at {ms} ms");
    }
    assert!(closed(&h.tick(65_999)).is_empty());
    let acts = h.tick(66_000);
    assert_eq!(closed(&acts), [(1, "silent for 6s".to_owned())]);
    // The relay is asked for at once, and the message waits for it.
    assert_eq!(relay_requests(&acts), [hub(0)]);
    assert!(sends_done(&acts).is_empty());
}

#[test]
fn a_link_in_use_that_answers_is_never_silent_and_one_that_stops_goes_6s_after_its_last_answer() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1);
    h.send(1000, 7, 1);
    let mut ms = 1000;
    // Answers every 2 s for 20 s; a message every 10 s keeps it in use.
    while ms <= 21_000 {
        assert!(closed(&h.tick(ms)).is_empty(), "at {ms} ms");
        h.pong(ms + 3, 1);
        if ms % 10_000 == 1000 {
            h.send(ms + 4, ms + 4, 1);
        }
        ms += 2000;
    }
    // The last answer came at 21,003 ms.
    assert!(closed(&h.tick(27_002)).is_empty());
    assert_eq!(closed(&h.tick(27_003)), [(1, "silent for 6s".to_owned())]);
}

#[test]
fn messages_that_arrive_put_the_peer_in_use_so_the_receiving_end_notices_a_dead_path_too() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1);
    h.tick(100);
    // The peer sends every second until 10 s; this side only receives.
    let mut pinged = 0;
    for ms in (1000..=10_000).step_by(1000) {
        h.at(ms, Input::Received { link: LinkId(1) });
        let acts = h.tick(ms);
        assert!(closed(&acts).is_empty(), "at {ms} ms");
        pinged += pings_on(&acts, 1);
    }
    assert_eq!(pinged, 4, "pinged every 2 s while in use, from 3 s");
    // Then the path dies: closed 6 s after the last message.
    assert!(closed(&h.tick(15_999)).is_empty());
    assert_eq!(closed(&h.tick(16_000)), [(1, "silent for 6s".to_owned())]);
}

#[test]
fn a_direct_link_must_answer_within_2s_when_the_peer_moves_to_a_relay() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1);
    h.tick(100);
    // Idle here; the peer lost the path (it asked for a relay, so it has no
    // direct link): the relay it joined arrives, and the direct link is
    // checked at once.
    let acts = h.relayed_up(10_000, 2);
    assert_eq!((pings_on(&acts, 1), pings_on(&acts, 2)), (1, 1));
    assert!(closed(&h.tick(11_999)).is_empty());
    let acts = h.tick(12_000);
    assert_eq!(
        closed(&acts),
        [(
            1,
            "no answer within 2s after the peer moved to a relay".to_owned()
        )]
    );
    assert_eq!(h.state.view().state, LinkState::Relayed);
}

#[test]
fn a_direct_link_that_answers_the_check_stays() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1);
    h.relayed_up(10_000, 2);
    h.pong(10_003, 1);
    h.pong(10_004, 2);
    assert!(closed(&h.tick(12_000)).is_empty());
    assert_eq!(h.state.view().state, LinkState::Direct);
}

#[test]
fn an_idle_peer_whose_silence_was_due_while_in_use_is_judged_however_late_the_wake() {
    let mut h = Harness::new();
    h.tick(0);
    h.direct_up(100, 1);
    h.send(1000, 7, 1);
    h.at(
        1001,
        Input::Ack {
            link: LinkId(1),
            id: 7,
        },
    );
    // Nothing heard after the ack: due at 7,001 ms, while still in use.
    assert_eq!(h.wake(), Some(3000).min(h.wake()));
    let acts = h.tick(40_000);
    assert_eq!(closed(&acts), [(1, "silent for 6s".to_owned())]);
    // And nothing is due in the past any more: no busy wake-up.
    assert!(h.wake().is_none_or(|wake| wake > 40_000), "{:?}", h.wake());
}
