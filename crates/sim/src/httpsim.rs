//! What the HTTP simulators ([`crate::sm`], [`crate::servicenow`], [`crate::pagerduty`]) share:
//! their state ([`SimState`]: settings, what they hold, faults, calls counted, outage gate); the
//! faults every one of them takes (each declares its faults type with `http_faults!`, which adds
//! its own keys to those); the middleware that applies them to every API call; the create faults
//! (act, then answer late or badly); the `/sim/faults`, `/sim/stats`, `/sim/incidents` and
//! `/sim/reset` control routes; persistence to a JSON file; Basic credentials.
//!
//! What differs stays with each simulator, through [`HttpSim`]: its error shapes and HTML pages,
//! the default status of injected errors, and faults of its own (forced 401s, 429s, rate rules).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::serve::OutageGate;

/// A simulator's faults type: `POST /sim/faults` takes it (camelCase keys, every one optional,
/// unknown ones refused; `{}` clears), `GET /sim/faults` shows it. The shared keys come first:
/// `latencyMs`, `jitterMs`, `hangMs`, `errorRate`, `errorStatus`, `html`, `outageMs`,
/// `createLateMs`, `createGarbage`, `createFaultCount`; then the simulator's own fields.
macro_rules! http_faults {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, ::serde::Deserialize, ::serde::Serialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Fixed latency added to every call, ms.
            #[serde(default)]
            pub latency_ms: u64,
            /// Extra random latency, uniform in 0..jitter_ms.
            #[serde(default)]
            pub jitter_ms: u64,
            /// Hold every call this long before answering (a hang past client timeouts).
            #[serde(default)]
            pub hang_ms: u64,
            /// Fraction (0..1) of calls answered with `errorStatus` (default: the simulator's
            /// own, [`HttpSim::ERROR_STATUS`](crate::httpsim::HttpSim::ERROR_STATUS)).
            #[serde(default)]
            pub error_rate: f64,
            /// Status of the `errorRate` answers.
            #[serde(default)]
            pub error_status: Option<u16>,
            /// Answer every call with the simulator's HTML page, as a proxy or a sleeping
            /// instance would ([`HttpSim::html_fault`](crate::httpsim::HttpSim::html_fault)).
            #[serde(default)]
            pub html: bool,
            /// Take the service down (port closed) for this many ms.
            #[serde(default)]
            pub outage_ms: u64,
            /// Creates only: act (store the record), then hold the answer this long (a very large
            /// value: never answer; the client's timeout fires while the record exists).
            #[serde(default)]
            pub create_late_ms: u64,
            /// Creates only: act, then answer this instead.
            #[serde(default)]
            pub create_garbage: Option<$crate::httpsim::CreateGarbage>,
            /// How many of the next creates get `createLateMs`/`createGarbage` (counts down;
            /// later creates are answered normally). Absent: every create.
            #[serde(default)]
            pub create_fault_count: Option<u64>,
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $crate::httpsim::HttpFaults for $name {
            fn shared(&self) -> $crate::httpsim::SharedFaults {
                $crate::httpsim::SharedFaults {
                    latency_ms: self.latency_ms,
                    jitter_ms: self.jitter_ms,
                    hang_ms: self.hang_ms,
                    error_rate: self.error_rate,
                    error_status: self.error_status,
                    html: self.html,
                    outage_ms: self.outage_ms,
                    create_late_ms: self.create_late_ms,
                    create_garbage: self.create_garbage,
                }
            }
            fn create_fault_count(&mut self) -> &mut Option<u64> {
                &mut self.create_fault_count
            }
        }
    };
}
pub(crate) use http_faults;

/// A bad answer to a create that did act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CreateGarbage {
    /// The create's success status with an empty body.
    Empty,
    /// 200 with an HTML page (`text/html`), as from a proxy or a servlet error page.
    Html,
    /// The usual answer without the record's id.
    NoId,
}

/// The faults every simulator takes, as set now.
#[derive(Debug, Clone, Copy)]
pub struct SharedFaults {
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub hang_ms: u64,
    pub error_rate: f64,
    pub error_status: Option<u16>,
    pub html: bool,
    pub outage_ms: u64,
    pub create_late_ms: u64,
    pub create_garbage: Option<CreateGarbage>,
}

/// A simulator's faults type, declared with `http_faults!`: the keys every simulator takes
/// (`latencyMs`, `jitterMs`, `hangMs`, `errorRate`, `errorStatus`, `html`, `outageMs`,
/// `createLateMs`, `createGarbage`, `createFaultCount`) and its own.
pub trait HttpFaults: Clone + Default + Serialize + DeserializeOwned + Send + 'static {
    /// The keys every simulator takes, as set now.
    fn shared(&self) -> SharedFaults;
    /// `createFaultCount`, to count down.
    fn create_fault_count(&mut self) -> &mut Option<u64>;

    /// Whether this create gets the create faults (and counts it).
    fn take_create_fault(&mut self) -> Option<CreateFault> {
        let s = self.shared();
        if s.create_late_ms == 0 && s.create_garbage.is_none() {
            return None;
        }
        match self.create_fault_count() {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some(CreateFault {
            late_ms: s.create_late_ms,
            garbage: s.create_garbage,
        })
    }
}

/// What one simulator does its own way; the rest is [`SimState`], [`middleware`] and the
/// control routes. Implemented by what the simulator holds (its tables, incidents, events).
pub trait HttpSim: Sized + Send + 'static {
    type Config: std::fmt::Debug + Send + Sync + 'static;
    type Faults: HttpFaults;
    /// What the simulator's own rate faults count (windows, per-key queues); started afresh
    /// whenever faults are set.
    type Rates: Default + Send + 'static;
    /// Status of `errorRate` answers when `errorStatus` is not set.
    const ERROR_STATUS: StatusCode;

    /// The simulator's routes, with its control routes.
    fn router(state: Arc<SimState<Self>>) -> Router;

    /// Every incident, oldest first, for `GET /sim/incidents`.
    fn incidents(&self) -> Vec<Value>;

    /// The answer of the `html` fault.
    fn html_fault() -> Response;

    /// The answer of the `errorRate` fault, in the simulator's error shape.
    fn injected_error(status: StatusCode) -> Response;

    /// A refused control call (`400`), in the simulator's error shape.
    fn bad_request(message: &str) -> Response;

    /// The simulator's own faults, decided for each call before its delay with the faults
    /// locked (so that "the next N calls" count down): an answer that replaces the call's,
    /// given after the delay and before `html` and `errorRate`, or headers to add to the
    /// call's answer.
    fn decide(
        _faults: &mut Self::Faults,
        _rates: &mut Self::Rates,
        _req: &Request,
    ) -> Result<HeaderMap, Response> {
        Ok(HeaderMap::new())
    }

    /// What `GET /sim/stats` shows besides `requests` and `inFlight`.
    fn stats(&self) -> Map<String, Value> {
        Map::new()
    }

    /// What `POST /sim/reset` does besides clearing the faults (see [`reset_route`]).
    fn forget(_state: &SimState<Self>) {}
}

#[derive(Debug, Default)]
struct Faulted<F, R> {
    faults: F,
    rates: R,
    /// Calls received.
    requests: u64,
    /// Calls received and not answered yet (held by a hang or latency fault).
    in_flight: u64,
}

/// A simulator's state: its settings, what it holds (behind one lock), its faults with the
/// calls counted (behind another, never held while the first is taken), and the gate that
/// closes its port during an outage.
pub struct SimState<D: HttpSim> {
    pub(crate) cfg: D::Config,
    data: Mutex<D>,
    faults: Mutex<Faulted<D::Faults, D::Rates>>,
    gate: Arc<OutageGate>,
}

impl<D: HttpSim> std::fmt::Debug for SimState<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState").field("cfg", &self.cfg).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<D: HttpSim> SimState<D> {
    pub(crate) fn with_data(cfg: D::Config, data: D) -> Arc<Self> {
        Arc::new(SimState {
            cfg,
            data: Mutex::new(data),
            faults: Mutex::default(),
            gate: Arc::default(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, D> {
        lock(&self.data)
    }

    fn faulted(&self) -> MutexGuard<'_, Faulted<D::Faults, D::Rates>> {
        lock(&self.faults)
    }

    /// The gate that closes the port during an `outageMs` fault (for [`crate::serve::serve`]).
    pub fn gate(&self) -> Arc<OutageGate> {
        self.gate.clone()
    }

    /// Sets the faults (`outageMs` starts an outage, anything else ends one) and starts the
    /// rate faults' counting afresh.
    pub fn set_faults(&self, f: D::Faults) {
        match f.shared().outage_ms {
            0 => self.gate.end(),
            ms => self.gate.start(Duration::from_millis(ms)),
        }
        let mut s = self.faulted();
        s.faults = f;
        s.rates = D::Rates::default();
    }

    /// The faults as set now (with what is left of their counts).
    pub fn faults(&self) -> D::Faults {
        self.faulted().faults.clone()
    }

    /// Runs `op` on the faults and the rate counts (for a simulator's own faults).
    pub(crate) fn with_faults<R>(&self, op: impl FnOnce(&mut D::Faults, &mut D::Rates) -> R) -> R {
        let mut s = self.faulted();
        let s = &mut *s;
        op(&mut s.faults, &mut s.rates)
    }

    /// Whether this create, which did act, gets the create faults (and counts it).
    pub(crate) fn take_create_fault(&self) -> Option<CreateFault> {
        self.faulted().faults.take_create_fault()
    }

    /// Every incident, oldest first.
    pub fn incidents(&self) -> Vec<Value> {
        self.lock().incidents()
    }
}

/// The create faults one create gets.
#[derive(Debug, Clone, Copy)]
pub struct CreateFault {
    pub late_ms: u64,
    pub garbage: Option<CreateGarbage>,
}

impl CreateFault {
    /// Holds the answer `late_ms`, then gives the garbage answer, if any: `empty` is
    /// `empty_status` with an empty JSON body, `html` is `html_page` (200), `noId` what `no_id`
    /// makes.
    pub async fn answer(
        self,
        empty_status: StatusCode,
        html_page: &'static str,
        no_id: impl FnOnce() -> Response,
    ) -> Option<Response> {
        if self.late_ms > 0 {
            tracing::debug!(late_ms = self.late_ms, "holding the answer to a create");
            tokio::time::sleep(Duration::from_millis(self.late_ms)).await;
        }
        Some(match self.garbage? {
            CreateGarbage::Empty => {
                (empty_status, [("content-type", "application/json")], "").into_response()
            }
            CreateGarbage::Html => html(StatusCode::OK, html_page),
            CreateGarbage::NoId => no_id(),
        })
    }
}

/// An HTML page (`text/html`).
pub fn html(status: StatusCode, page: &'static str) -> Response {
    (status, [("content-type", "text/html")], page).into_response()
}

/// Counts a call in flight until it is answered or its client goes away.
struct InFlight<D: HttpSim>(Arc<SimState<D>>);

impl<D: HttpSim> Drop for InFlight<D> {
    fn drop(&mut self) {
        self.0.faulted().in_flight -= 1;
    }
}

/// The faults, on every API call of a simulator: counts the call (and while it is unanswered),
/// holds it for the latency, jitter and hang, then answers for the simulator's own faults
/// ([`HttpSim::decide`]), with the HTML page, or with an injected error, or passes it on.
pub async fn middleware<D: HttpSim>(
    State(st): State<Arc<SimState<D>>>,
    req: Request,
    next: Next,
) -> Response {
    let (f, decision) = {
        let mut s = st.faulted();
        s.requests += 1;
        s.in_flight += 1;
        let s = &mut *s;
        (
            s.faults.shared(),
            D::decide(&mut s.faults, &mut s.rates, &req),
        )
    };
    let _guard = InFlight(st.clone());
    let jitter = if f.jitter_ms > 0 {
        rand::thread_rng().gen_range(0..f.jitter_ms)
    } else {
        0
    };
    let delay = f
        .latency_ms
        .saturating_add(jitter)
        .saturating_add(f.hang_ms);
    if delay > 0 {
        crate::latency::sleep(Duration::from_millis(delay)).await;
    }
    let headers = match decision {
        Ok(h) => h,
        Err(answer) => return answer,
    };
    if f.html {
        return D::html_fault();
    }
    if f.error_rate > 0.0 && rand::thread_rng().gen_bool(f.error_rate.clamp(0.0, 1.0)) {
        let status = f
            .error_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(D::ERROR_STATUS);
        return D::injected_error(status);
    }
    let mut resp = next.run(req).await;
    resp.headers_mut().extend(headers);
    resp
}

/// `GET /sim/incidents`, `GET /sim/stats` (`requests`, `inFlight` and [`HttpSim::stats`]), and
/// `/sim/faults`: `GET` shows the faults, `POST` sets them, `DELETE` clears them; each answers
/// `{"faults": ...}`.
pub fn control_routes<D: HttpSim>() -> Router<Arc<SimState<D>>> {
    Router::new()
        .route("/sim/incidents", get(sim_incidents::<D>))
        .route("/sim/stats", get(sim_stats::<D>))
        .route(
            "/sim/faults",
            post(sim_set_faults::<D>)
                .delete(sim_clear_faults::<D>)
                .get(sim_get_faults::<D>),
        )
}

/// `POST /sim/reset`: clears the faults and forgets what [`HttpSim::forget`] says;
/// `{"reset": true}`.
pub fn reset_route<D: HttpSim>() -> Router<Arc<SimState<D>>> {
    Router::new().route("/sim/reset", post(sim_reset::<D>))
}

async fn sim_incidents<D: HttpSim>(State(st): State<Arc<SimState<D>>>) -> Response {
    Json(json!({ "incidents": st.incidents() })).into_response()
}

async fn sim_stats<D: HttpSim>(State(st): State<Arc<SimState<D>>>) -> Response {
    let (requests, in_flight) = {
        let s = st.faulted();
        (s.requests, s.in_flight)
    };
    let mut stats = st.lock().stats();
    stats.insert("requests".into(), json!(requests));
    stats.insert("inFlight".into(), json!(in_flight));
    Json(Value::Object(stats)).into_response()
}

async fn sim_set_faults<D: HttpSim>(State(st): State<Arc<SimState<D>>>, body: Bytes) -> Response {
    match serde_json::from_slice::<D::Faults>(&body) {
        Ok(f) => {
            st.set_faults(f.clone());
            Json(json!({ "faults": f })).into_response()
        }
        Err(e) => D::bad_request(&format!("invalid faults: {e}")),
    }
}

async fn sim_clear_faults<D: HttpSim>(State(st): State<Arc<SimState<D>>>) -> Response {
    st.set_faults(D::Faults::default());
    Json(json!({ "faults": D::Faults::default() })).into_response()
}

async fn sim_get_faults<D: HttpSim>(State(st): State<Arc<SimState<D>>>) -> Response {
    Json(json!({ "faults": st.faults() })).into_response()
}

async fn sim_reset<D: HttpSim>(State(st): State<Arc<SimState<D>>>) -> Response {
    st.set_faults(D::Faults::default());
    D::forget(&st);
    Json(json!({ "reset": true })).into_response()
}

/// The user whose Basic credentials (`b64`, what follows the scheme) `users` (name → password)
/// has; a user name without `:` has an empty password.
pub fn basic_user(b64: &str, users: &HashMap<String, String>) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())?;
    let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
    (users.get(user).map(String::as_str) == Some(pass)).then(|| user.to_string())
}

/// What a simulator persisted at `path`, if it has a path and the file is there; a file that
/// does not read as `T` is ignored with a warning naming `what`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, what: &str) -> Option<T> {
    let path = path?;
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable {what} file");
            None
        }
    }
}

/// Writes `value` to `path` (pretty JSON, atomically) if there is a path; a failure is logged
/// as about `what`.
pub fn save<T: Serialize + ?Sized>(path: Option<&Path>, value: &T, what: &str) {
    let Some(path) = path else { return };
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            if let Err(e) = crate::pki::write_atomic(path, &body, 0o644) {
                tracing::warn!(error = %e, "cannot persist {what}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serialise {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    http_faults! {
        /// A simulator's faults with one key of its own.
        pub struct TestFaults {
            /// Its own key.
            #[serde(default)]
            pub own_next: u64,
        }
    }

    #[test]
    fn shared_and_own_keys_parse_and_unknown_ones_are_refused() {
        let f: TestFaults = serde_json::from_value(json!({
            "latencyMs": 5, "errorRate": 1, "createGarbage": "noId", "ownNext": 2
        }))
        .expect("faults");
        assert_eq!((f.latency_ms, f.error_rate, f.own_next), (5, 1.0, 2));
        assert_eq!(f.create_garbage, Some(CreateGarbage::NoId));
        assert!(serde_json::from_value::<TestFaults>(json!({"nope": 1})).is_err());
        let shown = serde_json::to_value(TestFaults::default()).expect("json");
        assert_eq!(shown["createFaultCount"], Value::Null);
        assert_eq!(shown["ownNext"], 0);
    }

    #[test]
    fn create_faults_count_down_and_only_when_set() {
        let mut f = TestFaults::default();
        assert!(f.take_create_fault().is_none());
        f.create_late_ms = 10;
        f.create_fault_count = Some(1);
        let c = f.take_create_fault().expect("one");
        assert_eq!((c.late_ms, c.garbage), (10, None));
        assert!(f.take_create_fault().is_none());
        assert_eq!(f.create_fault_count, Some(0));
        f.create_fault_count = None;
        assert!(f.take_create_fault().is_some() && f.take_create_fault().is_some());
    }
}
