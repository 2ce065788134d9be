//! Several daemons used as one (`stctl --socket A --socket B ...`).
//!
//! A request goes to the endpoint its route key ranks first and on to the next when that one is
//! unreachable, loading, stopping or overloaded, as long as no stream piece has been passed on.
//! The ranking is rendezvous hashing: each endpoint's score is a hash of the key and the
//! endpoint's address, so every client with the same endpoints (in any order) picks the same one,
//! and an endpoint that leaves moves only its own keys. A timed-out request is not sent elsewhere
//! (it may still be running: sending it again would run it twice).
//!
//! Before the first request every endpoint is asked its engine fingerprint, in parallel; only
//! endpoints with the pinned fingerprint (or, unpinned, the one most of them share) are used: an
//! engine with another fingerprint may give other bits, and a fleet must answer as one daemon.
//! With one endpoint nothing of this happens: the client behaves as it always did.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Client, ClientError, ClientOptions, Target, MAX_RETRY_WAIT};
use crate::protocol::{codes, Method, NoParams, Status};

/// The longest wait for an endpoint's fingerprint before the first request.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no endpoint of a fleet served a request.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The endpoint that took the request answered with this error (with one endpoint: any error).
    #[error(transparent)]
    Call(#[from] ClientError),
    /// No endpoint could serve it; why each one could not.
    #[error("no endpoint could answer: {}", .0.join("; "))]
    NoneAnswered(Vec<String>),
    /// Unpinned endpoints split evenly between engine fingerprints.
    #[error(
        "the endpoints disagree on the engine fingerprint ({0}), so their answers can differ in bits; \
         make the fleet uniform (same ONNX Runtime, same CPU class, see `stctl status`) or choose one \
         fingerprint with --fingerprint"
    )]
    Disagree(String),
}

impl FleetError {
    /// Whether direct mode could serve the request instead (when the user allows it).
    pub fn allows_fallback(&self) -> bool {
        match self {
            FleetError::Call(e) => e.allows_fallback(),
            FleetError::NoneAnswered(_) => true,
            FleetError::Disagree(_) => false,
        }
    }
}

/// An endpoint left out of a fleet, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The endpoint.
    pub target: Target,
    /// Why it is not used.
    pub reason: String,
}

/// One endpoint that may answer.
struct Member {
    target: Target,
    /// Opened on first use.
    client: Option<Client>,
    /// It failed in a way that rules it out for the rest of this fleet's life.
    down: bool,
}

/// Daemons that answer alike, used as one: see the module documentation.
pub struct Fleet {
    members: Vec<Member>,
    options: ClientOptions,
    refused: Vec<Refusal>,
    fingerprint: Option<String>,
    answered_by: Option<Target>,
}

/// The order in which `route_key` tries `targets` (indexes): highest rendezvous score first.
/// Without a key, the order given.
pub fn rank(targets: &[Target], route_key: Option<&str>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..targets.len()).collect();
    if let Some(key) = route_key {
        let score = |t: &Target| {
            let digest = Sha256::new().chain_update(key).chain_update([0]).chain_update(t.to_string()).finalize();
            u64::from_be_bytes(digest[..8].try_into().expect("a sha256 has 8 bytes"))
        };
        order.sort_by_key(|&i| std::cmp::Reverse(score(&targets[i])));
    }
    order
}

/// Whether `e` from one endpoint lets the request go to the next one: the endpoint did not take
/// it (unreachable, loading, draining, overloaded) or died before answering anything.
fn fails_over(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } | ClientError::Protocol(_) => true,
        ClientError::Rpc(e) => [codes::OVERLOADED, codes::MODEL_NOT_LOADED, codes::SHUTTING_DOWN].contains(&e.code),
        ClientError::Tls(_) | ClientError::Timeout(_) => false,
    }
}

fn is_overloaded(e: &ClientError) -> Option<Duration> {
    match e {
        ClientError::Rpc(e) if e.code == codes::OVERLOADED => {
            let hint = e.data.as_ref().and_then(|d| d["retry_after_ms"].as_u64()).unwrap_or(100);
            Some(Duration::from_millis(hint).min(MAX_RETRY_WAIT))
        }
        _ => None,
    }
}

impl Fleet {
    /// Opens `targets`. One target without a pinned fingerprint is connected at once, as a plain
    /// client; otherwise every target is asked its engine fingerprint (in parallel) and those that
    /// differ from `pinned` (or, unpinned, from the one most share) are refused.
    pub fn connect(targets: &[Target], options: ClientOptions, pinned: Option<&str>) -> Result<Self, FleetError> {
        if let ([target], None) = (targets, pinned) {
            let client = Client::connect_with(target, options.clone())?;
            return Ok(Fleet {
                members: vec![Member { target: target.clone(), client: Some(client), down: false }],
                options,
                refused: Vec::new(),
                fingerprint: None,
                answered_by: None,
            });
        }
        let survey_options = ClientOptions {
            read_timeout: options.read_timeout.min(SURVEY_TIMEOUT),
            retries: 0,
            loading_patience: Duration::ZERO,
            ..options.clone()
        };
        let fingerprints: Vec<Result<String, ClientError>> = std::thread::scope(|scope| {
            let asks: Vec<_> = targets
                .iter()
                .map(|t| {
                    let options = survey_options.clone();
                    scope.spawn(move || -> Result<String, ClientError> {
                        let status: Status = Client::connect_with(t, options)?.request(Method::Status, &NoParams {})?;
                        Ok(status.engine_fingerprint)
                    })
                })
                .collect();
            asks.into_iter()
                .map(|a| a.join().unwrap_or_else(|_| Err(ClientError::Protocol("the survey thread panicked".into()))))
                .collect()
        });
        let fingerprint = match pinned {
            Some(p) => p.to_string(),
            None => majority(fingerprints.iter().filter_map(|f| f.as_ref().ok()))?
                .ok_or_else(|| unanswered(targets, &fingerprints))?,
        };
        let mut members = Vec::new();
        let mut refused = Vec::new();
        for (target, found) in targets.iter().zip(&fingerprints) {
            let reason = match found {
                Ok(f) if *f == fingerprint => {
                    members.push(Member { target: target.clone(), client: None, down: false });
                    continue;
                }
                Ok(f) => format!("its engine fingerprint {f} is not the fleet's {fingerprint}"),
                Err(e) => e.to_string(),
            };
            refused.push(Refusal { target: target.clone(), reason });
        }
        if members.is_empty() {
            return Err(FleetError::NoneAnswered(
                refused.iter().map(|r| format!("{}: {}", r.target, r.reason)).collect(),
            ));
        }
        // Several endpoints: an endpoint that is loading or refuses passes the request on at once.
        let options = match targets.len() {
            1 => options,
            _ => ClientOptions { retries: 0, loading_patience: Duration::ZERO, ..options },
        };
        Ok(Fleet { members, options, refused, fingerprint: Some(fingerprint), answered_by: None })
    }

    /// The endpoints left out, and why.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// The engine fingerprint every endpoint in use has (None with one endpoint and no pin).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The endpoint that gave the last answer.
    pub fn answered_by(&self) -> Option<&Target> {
        self.answered_by.as_ref()
    }

    /// Runs `call` on the endpoint `route_key` ranks first, then on the next ones while an
    /// endpoint fails in a way that lets it move on ([`fails_over`]) before passing on any piece.
    /// When every endpoint left was overloaded, waits for the shortest hint and goes round again
    /// (at most `retries` times).
    pub fn call<R>(
        &mut self,
        route_key: Option<&str>,
        mut call: impl FnMut(&mut Client) -> Result<R, ClientError>,
    ) -> Result<R, FleetError> {
        let targets: Vec<Target> = self.members.iter().map(|m| m.target.clone()).collect();
        let order = rank(&targets, route_key);
        let single = self.members.len() == 1;
        // The last error of each endpoint, for the message when none answers.
        let mut failures: Vec<Option<String>> = vec![None; self.members.len()];
        for round in 0..=self.options.retries {
            let mut wait: Option<Duration> = None;
            for &i in &order {
                let member = &mut self.members[i];
                if member.down {
                    continue;
                }
                let client = match &mut member.client {
                    Some(c) => c,
                    slot => match Client::connect_with(&member.target, self.options.clone()) {
                        Ok(c) => slot.insert(c),
                        Err(e) if single => return Err(e.into()),
                        Err(e) => {
                            member.down = true;
                            failures[i] = Some(format!("{}: {e}", member.target));
                            continue;
                        }
                    },
                };
                client.set_route_key(route_key.map(str::to_string));
                let before = client.pieces_delivered();
                match call(client) {
                    Ok(r) => {
                        self.answered_by = Some(member.target.clone());
                        return Ok(r);
                    }
                    Err(e) if !single && fails_over(&e) && client.pieces_delivered() == before => {
                        match is_overloaded(&e) {
                            Some(hint) => wait = Some(wait.map_or(hint, |w| w.min(hint))),
                            None => {
                                member.down = true;
                                member.client = None;
                            }
                        }
                        failures[i] = Some(format!("{}: {e}", member.target));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            match wait {
                Some(w) if round < self.options.retries => std::thread::sleep(w),
                _ => break,
            }
        }
        Err(FleetError::NoneAnswered(failures.into_iter().flatten().collect()))
    }
}

/// The fingerprint most endpoints report; None when none answered; an error on a tie.
fn majority<'a>(found: impl Iterator<Item = &'a String>) -> Result<Option<String>, FleetError> {
    let mut counts: Vec<(&String, usize)> = Vec::new();
    for f in found {
        match counts.iter_mut().find(|(g, _)| *g == f) {
            Some((_, n)) => *n += 1,
            None => counts.push((f, 1)),
        }
    }
    counts.sort_by_key(|&(f, n)| (std::cmp::Reverse(n), f));
    match counts.as_slice() {
        [] => Ok(None),
        [(_, n), (_, m), ..] if n == m => {
            Err(FleetError::Disagree(counts.iter().map(|(f, n)| format!("{f} on {n}")).collect::<Vec<_>>().join(", ")))
        }
        [(f, _), ..] => Ok(Some((*f).clone())),
    }
}

fn unanswered(targets: &[Target], found: &[Result<String, ClientError>]) -> FleetError {
    FleetError::NoneAnswered(
        targets.iter().zip(found).filter_map(|(t, f)| f.as_ref().err().map(|e| format!("{t}: {e}"))).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize) -> Vec<Target> {
        (0..n).map(|i| Target::Http(format!("http://10.0.0.{i}:5558"))).collect()
    }

    #[test]
    fn rank_is_order_free_and_a_leaving_endpoint_moves_only_its_keys() {
        let four = targets(4);
        let mut reversed = four.clone();
        reversed.reverse();
        let three = &four[..3];
        let mut first = [0usize; 4];
        for k in 0..2000 {
            let key = format!("key-{k}");
            let a = four[rank(&four, Some(&key))[0]].clone();
            assert_eq!(a, reversed[rank(&reversed, Some(&key))[0]], "the order of the list changed the pick");
            first[four.iter().position(|t| *t == a).unwrap()] += 1;
            let b = &three[rank(three, Some(&key))[0]];
            if a != four[3] {
                assert_eq!(*b, a, "a key of a remaining endpoint moved");
            }
        }
        // Each endpoint gets its share (2000 / 4 = 500, within 20%).
        assert!(first.iter().all(|&n| (400..=600).contains(&n)), "{first:?}");
        assert_eq!(rank(&four, None), vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_majority_fingerprint_wins_and_a_tie_is_an_error() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(majority(s(&["a", "b", "a"]).iter()).unwrap().as_deref(), Some("a"));
        assert_eq!(majority(s(&[]).iter()).unwrap(), None);
        let tie = majority(s(&["a", "b"]).iter()).unwrap_err();
        assert!(matches!(tie, FleetError::Disagree(_)) && tie.to_string().contains("--fingerprint"), "{tie}");
    }

    #[test]
    fn only_errors_before_the_endpoint_took_the_request_fail_over() {
        let rpc = |code| ClientError::Rpc(crate::protocol::RpcError { code, message: String::new(), data: None });
        assert!(fails_over(&rpc(codes::SHUTTING_DOWN)) && fails_over(&rpc(codes::OVERLOADED)));
        assert!(!fails_over(&rpc(codes::INVALID_PARAMS)) && !fails_over(&rpc(codes::UNAUTHORIZED)));
        assert!(!fails_over(&ClientError::Timeout(5)), "a timed-out request may still run: never twice");
        assert!(fails_over(&ClientError::Protocol("closed".into())));
    }
}
