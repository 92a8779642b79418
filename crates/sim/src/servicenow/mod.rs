//! A ServiceNow instance, as much of it as a ticketing client meets: the Table API on `incident`
//! (create, read, list with encoded queries and paging headers, update, delete; journal fields;
//! the incident lifecycle and its data policy), read-only `cmdb_ci`, `sys_journal_field`,
//! `em_event` and `em_alert` tables, Event Management's `POST /api/global/em/jsonv2`, Basic auth
//! and OAuth 2.0 (`/oauth_token.do`: client credentials, password and refresh-token grants;
//! bearer tokens that expire), rate limiting (429 with `X-RateLimit-*` and `Retry-After`), and
//! every error in the instance's envelope `{"error":{"message","detail"},"status":"failure"}`.
//!
//! Fault injection (latency, a 5xx rate, forced 401s or 429s for the next N calls, a rate-limit
//! rule, an HTML page, hangs, an outage that closes the port, and incident creates that store
//! the incident and then answer late or badly) is set through `/sim/...` routes on the same
//! port, which need no auth and also read back incidents with their journal, events and alerts,
//! seed CIs, act on incidents as a human, expire tokens and reset. docs/FIDELITY.md lists what
//! is simplified.

pub mod query;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::httpsim::{self, http_faults, HttpSim, SimState};
use query::Query;

/// An OAuth client registered on the instance (System OAuth > Application Registry).
#[derive(Debug, Clone)]
pub struct OauthClient {
    pub secret: String,
    /// The user a client-credentials token acts as (the application's "OAuth Application User").
    pub user: String,
}

/// Settings of the ServiceNow simulator.
#[derive(Debug, Clone)]
pub struct SnConfig {
    /// Basic-auth users (also for the password grant): name → password (default admin/admin).
    pub users: HashMap<String, String>,
    /// OAuth clients: client_id → secret and user (default `scmb-sim` / `secret` as admin).
    pub oauth_clients: HashMap<String, OauthClient>,
    /// Lifetime of an access token (the instance's default is 1800 s).
    pub token_lifetime: Duration,
    /// Lifetime of a refresh token (default 100 days).
    pub refresh_lifetime: Duration,
    /// The data policy that makes `close_code` and `close_notes` mandatory to resolve or close.
    pub require_close_fields: bool,
    /// `glide.invalid_query.returns_no_rows`: a query with an unknown field or operator returns
    /// no rows instead of ignoring that part.
    pub invalid_query_returns_no_rows: bool,
    /// Where the tables persist (JSON), if anywhere.
    pub persist: Option<PathBuf>,
    /// First incident number (INC0010001).
    pub first_number: u64,
    /// Served over TLS: links and `Location` use `https`.
    pub tls: bool,
}

impl Default for SnConfig {
    fn default() -> Self {
        SnConfig {
            users: HashMap::from([("admin".to_string(), "admin".to_string())]),
            oauth_clients: HashMap::from([(
                "scmb-sim".to_string(),
                OauthClient {
                    secret: "secret".into(),
                    user: "admin".into(),
                },
            )]),
            token_lifetime: Duration::from_secs(1800),
            refresh_lifetime: Duration::from_secs(8_640_000),
            require_close_fields: true,
            invalid_query_returns_no_rows: false,
            persist: None,
            first_number: 10001,
            tls: false,
        }
    }
}

http_faults! {
    /// Faults, set through `POST /sim/faults` (every key optional, unknown ones refused; `{}`
    /// clears): those of every HTTP simulator ([`crate::httpsim`]; here they apply to every
    /// call: Table API, Event Management, OAuth; the create faults to incident creates; injected
    /// errors are 503 in the instance's envelope, the HTML page a hibernating developer
    /// instance's 200), and:
    pub struct SnFaults {
        /// Answer every `/api/...` call 401 whatever the credentials.
        #[serde(default)]
        pub unauthorized: bool,
        /// Answer the next N `/api/...` calls 401 (counts down).
        #[serde(default)]
        pub unauthorized_next: u64,
        /// Answer the next N calls 429 (counts down), with `Retry-After: retryAfterS`.
        #[serde(default)]
        pub rate_limit_next: u64,
        /// `Retry-After` of `rateLimitNext` answers, seconds (default 1).
        #[serde(default)]
        pub retry_after_s: Option<u64>,
        /// A rate-limit rule: this many calls per `rateWindowMs` (0 = none). Every answer then
        /// carries `X-RateLimit-Limit`, `-Remaining` and `-Reset`; calls over it get 429.
        #[serde(default)]
        pub rate_limit: u64,
        /// Window of `rateLimit`, ms (default one hour, as the instance's rules).
        #[serde(default)]
        pub rate_window_ms: Option<u64>,
    }
}

/// The tables the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Incident,
    Journal,
    CmdbCi,
    EmEvent,
    EmAlert,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "incident" => Kind::Incident,
            "sys_journal_field" => Kind::Journal,
            "cmdb_ci" => Kind::CmdbCi,
            "em_event" => Kind::EmEvent,
            "em_alert" => Kind::EmAlert,
            _ => return None,
        })
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Incident => INCIDENT_FIELDS,
            Kind::Journal => JOURNAL_FIELDS,
            Kind::CmdbCi => CI_FIELDS,
            Kind::EmEvent => EVENT_FIELDS,
            Kind::EmAlert => ALERT_FIELDS,
        }
    }

    /// Reference fields and the table they point to.
    fn reference(self, field: &str) -> Option<&'static str> {
        match self {
            Kind::Incident => INCIDENT_REFERENCES
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, t)| *t),
            Kind::EmAlert | Kind::EmEvent if field == "cmdb_ci" => Some("cmdb_ci"),
            Kind::EmEvent if field == "alert" => Some("em_alert"),
            _ => None,
        }
    }
}

const INCIDENT_FIELDS: &[&str] = &[
    "active",
    "activity_due",
    "additional_assignee_list",
    "approval",
    "approval_history",
    "approval_set",
    "assigned_to",
    "assignment_group",
    "business_duration",
    "business_service",
    "business_stc",
    "calendar_duration",
    "calendar_stc",
    "caller_id",
    "category",
    "caused_by",
    "child_incidents",
    "close_code",
    "close_notes",
    "closed_at",
    "closed_by",
    "cmdb_ci",
    "comments",
    "comments_and_work_notes",
    "company",
    "contact_type",
    "correlation_display",
    "correlation_id",
    "delivery_plan",
    "delivery_task",
    "description",
    "due_date",
    "escalation",
    "expected_start",
    "follow_up",
    "group_list",
    "hold_reason",
    "impact",
    "incident_state",
    "knowledge",
    "location",
    "made_sla",
    "notify",
    "number",
    "opened_at",
    "opened_by",
    "order",
    "parent",
    "parent_incident",
    "priority",
    "problem_id",
    "reassignment_count",
    "rejection_goto",
    "reopen_count",
    "reopened_by",
    "reopened_time",
    "resolved_at",
    "resolved_by",
    "rfc",
    "severity",
    "short_description",
    "sla_due",
    "state",
    "subcategory",
    "sys_class_name",
    "sys_created_by",
    "sys_created_on",
    "sys_domain",
    "sys_domain_path",
    "sys_id",
    "sys_mod_count",
    "sys_tags",
    "sys_updated_by",
    "sys_updated_on",
    "time_worked",
    "upon_approval",
    "upon_reject",
    "urgency",
    "user_input",
    "watch_list",
    "wf_activity",
    "work_end",
    "work_notes",
    "work_notes_list",
    "work_start",
];

const INCIDENT_DEFAULTS: &[(&str, &str)] = &[
    ("active", "true"),
    ("approval", "not requested"),
    ("category", "inquiry"),
    ("child_incidents", "0"),
    ("escalation", "0"),
    ("impact", "3"),
    ("incident_state", "1"),
    ("knowledge", "false"),
    ("made_sla", "true"),
    ("notify", "1"),
    ("priority", "5"),
    ("reassignment_count", "0"),
    ("reopen_count", "0"),
    ("severity", "3"),
    ("state", "1"),
    ("sys_class_name", "incident"),
    ("sys_domain", "global"),
    ("sys_domain_path", "/"),
    ("sys_mod_count", "0"),
    ("upon_approval", "proceed"),
    ("upon_reject", "cancel"),
    ("urgency", "3"),
];

const INCIDENT_REFERENCES: &[(&str, &str)] = &[
    ("assigned_to", "sys_user"),
    ("assignment_group", "sys_user_group"),
    ("business_service", "cmdb_ci_service"),
    ("caller_id", "sys_user"),
    ("caused_by", "change_request"),
    ("closed_by", "sys_user"),
    ("cmdb_ci", "cmdb_ci"),
    ("company", "core_company"),
    ("location", "cmn_location"),
    ("opened_by", "sys_user"),
    ("parent", "task"),
    ("parent_incident", "incident"),
    ("problem_id", "problem"),
    ("reopened_by", "sys_user"),
    ("resolved_by", "sys_user"),
    ("rfc", "change_request"),
    ("sys_domain", "sys_user_group"),
];

/// Fields the instance computes or owns: writes to them are ignored.
const READ_ONLY: &[&str] = &[
    "active",
    "incident_state",
    "priority",
    "number",
    "comments_and_work_notes",
    "opened_by",
    "opened_at",
    "resolved_at",
    "resolved_by",
    "closed_at",
    "closed_by",
    "reopen_count",
    "reopened_by",
    "reopened_time",
];

const JOURNAL_ELEMENTS: &[&str] = &["work_notes", "comments"];

const JOURNAL_FIELDS: &[&str] = &[
    "element",
    "element_id",
    "name",
    "sys_created_by",
    "sys_created_on",
    "sys_id",
    "sys_tags",
    "value",
];

const CI_FIELDS: &[&str] = &[
    "asset_tag",
    "category",
    "company",
    "correlation_id",
    "fqdn",
    "install_status",
    "ip_address",
    "location",
    "manufacturer",
    "model_id",
    "model_number",
    "name",
    "operational_status",
    "serial_number",
    "short_description",
    "sys_class_name",
    "sys_created_by",
    "sys_created_on",
    "sys_domain",
    "sys_id",
    "sys_mod_count",
    "sys_updated_by",
    "sys_updated_on",
];

const EVENT_FIELDS: &[&str] = &[
    "additional_info",
    "alert",
    "cmdb_ci",
    "description",
    "event_class",
    "message_key",
    "metric_name",
    "node",
    "processing_notes",
    "resolution_state",
    "resource",
    "severity",
    "source",
    "state",
    "sys_created_by",
    "sys_created_on",
    "sys_id",
    "sys_updated_by",
    "sys_updated_on",
    "time_of_event",
    "type",
];

const ALERT_FIELDS: &[&str] = &[
    "additional_info",
    "cmdb_ci",
    "description",
    "event_class",
    "event_count",
    "initial_event",
    "initial_remote_time",
    "last_event",
    "last_remote_time",
    "message_key",
    "metric_name",
    "node",
    "number",
    "resource",
    "severity",
    "source",
    "state",
    "sys_created_by",
    "sys_created_on",
    "sys_id",
    "sys_mod_count",
    "sys_updated_by",
    "sys_updated_on",
    "type",
];

/// Rows of one table, in insertion order, indexed by `sys_id`.
#[derive(Debug, Default)]
struct Table {
    rows: BTreeMap<u64, Map<String, Value>>,
    index: HashMap<String, u64>,
    next_seq: u64,
}

impl Table {
    fn insert(&mut self, row: Map<String, Value>) {
        let id = text(&row, "sys_id").to_string();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index.insert(id, seq);
        self.rows.insert(seq, row);
    }
    fn get(&self, sys_id: &str) -> Option<&Map<String, Value>> {
        self.index.get(sys_id).and_then(|s| self.rows.get(s))
    }
    fn get_mut(&mut self, sys_id: &str) -> Option<&mut Map<String, Value>> {
        let seq = *self.index.get(sys_id)?;
        self.rows.get_mut(&seq)
    }
    fn remove(&mut self, sys_id: &str) -> Option<Map<String, Value>> {
        let seq = self.index.remove(sys_id)?;
        self.rows.remove(&seq)
    }
    fn all(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.rows.values()
    }
    fn len(&self) -> usize {
        self.rows.len()
    }
}

#[derive(Debug, Clone)]
struct Token {
    user: String,
    client_id: String,
    expires: Instant,
}

/// The instance's tables and tokens.
#[derive(Debug, Default)]
pub struct SnData {
    incident: Table,
    journal: Table,
    cmdb_ci: Table,
    em_event: Table,
    em_alert: Table,
    next_number: u64,
    next_alert: u64,
    access: HashMap<String, Token>,
    refresh: HashMap<String, Token>,
}

/// Start of the rate-limit window and the calls counted in it.
type RateWindow = Option<(Instant, u64)>;

impl SnData {
    /// Empty tables, numbering from the start.
    fn fresh(cfg: &SnConfig) -> SnData {
        SnData {
            next_number: cfg.first_number,
            next_alert: 10001,
            ..Default::default()
        }
    }

    fn table(&self, k: Kind) -> &Table {
        match k {
            Kind::Incident => &self.incident,
            Kind::Journal => &self.journal,
            Kind::CmdbCi => &self.cmdb_ci,
            Kind::EmEvent => &self.em_event,
            Kind::EmAlert => &self.em_alert,
        }
    }
}

/// The simulated instance.
pub type SnState = SimState<SnData>;

/// The instance's date-time form, in UTC: `2026-11-25 10:00:00`.
fn sn_now() -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new sys_id: 32 lower-case hex digits.
fn new_sys_id() -> String {
    hex(&rand::thread_rng().gen::<[u8; 16]>())
}

/// The sys_id of a user, stable for a user name (the simulator has no `sys_user` table).
pub fn user_sys_id(name: &str) -> String {
    let d = sha2::Sha256::digest(format!("sys_user:{name}").as_bytes());
    hex(&d[..16])
}

fn text<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Values are stored as the instance returns them: strings.
fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The instance's error envelope.
pub fn sn_error(status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "detail": detail}, "status": "failure"})),
    )
        .into_response()
}

fn unauthenticated() -> Response {
    let mut r = sn_error(
        StatusCode::UNAUTHORIZED,
        "User Not Authenticated",
        Some("Required to provide Auth information"),
    );
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("BASIC realm=\"Service-now\""),
    );
    r
}

fn not_found() -> Response {
    sn_error(
        StatusCode::NOT_FOUND,
        "No Record found",
        Some("Record doesn't exist or ACL restricts the record retrieval"),
    )
}

fn acl(action: &str) -> Response {
    sn_error(
        StatusCode::FORBIDDEN,
        "Operation Failed",
        Some(&format!(
            "ACL Exception {action} Failed due to security constraints"
        )),
    )
}

fn bad_body() -> Response {
    sn_error(
        StatusCode::BAD_REQUEST,
        "Exception while reading request",
        Some("The payload is not valid JSON."),
    )
}

fn rate_limited(limit: u64, reset_epoch: i64, retry_after: u64) -> Response {
    let mut r = sn_error(
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded",
        Some(&format!(
            "The request was rejected by a rate limit rule. Retry after {retry_after} seconds."
        )),
    );
    let h = r.headers_mut();
    for (k, v) in [
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", "0".to_string()),
        ("x-ratelimit-reset", reset_epoch.to_string()),
        ("retry-after", retry_after.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    r
}

/// The HTML page a hibernating developer instance answers (200, `text/html`).
const HIBERNATING: &str = "<html><head><title>ServiceNow Developers</title></head><body><h1>Your instance is hibernating</h1><p>Sign in to the developer portal to wake it up.</p></body></html>";

/// Persisted form of the tables.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    #[serde(default)]
    incident: Vec<Map<String, Value>>,
    #[serde(default)]
    sys_journal_field: Vec<Map<String, Value>>,
    #[serde(default)]
    cmdb_ci: Vec<Map<String, Value>>,
    #[serde(default)]
    em_event: Vec<Map<String, Value>>,
    #[serde(default)]
    em_alert: Vec<Map<String, Value>>,
    #[serde(default)]
    next_number: u64,
    #[serde(default)]
    next_alert: u64,
}

impl HttpSim for SnData {
    type Config = SnConfig;
    type Faults = SnFaults;
    type Rates = RateWindow;
    const ERROR_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

    /// The ServiceNow routes, with the `/sim/...` control routes.
    fn router(state: Arc<SnState>) -> Router {
        let api = Router::new()
            .route("/oauth_token.do", post(oauth_token))
            .route("/api/now/table/{table}", get(list).post(create))
            .route(
                "/api/now/table/{table}/{sys_id}",
                get(get_one).patch(update).put(update).delete(delete),
            )
            .route("/api/now/{version}/table/{table}", get(list).post(create))
            .route(
                "/api/now/{version}/table/{table}/{sys_id}",
                get(get_one).patch(update).put(update).delete(delete),
            )
            .route("/api/global/em/jsonv2", post(em_jsonv2))
            .method_not_allowed_fallback(|| async {
                sn_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method not Supported",
                    Some("The HTTP method is not supported by this resource"),
                )
            })
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                httpsim::middleware::<SnData>,
            ));
        Router::new()
            .merge(api)
            .route("/sim/incidents/{id}/{action}", post(sim_act))
            .route("/sim/cmdb_ci", get(sim_cis).post(sim_seed_ci))
            .route("/sim/events", get(sim_events))
            .route("/sim/tokens/expire", post(sim_expire_tokens))
            .merge(httpsim::control_routes::<SnData>())
            .merge(httpsim::reset_route::<SnData>())
            .fallback(|| async {
                sn_error(
                    StatusCode::BAD_REQUEST,
                    "Requested URI does not represent any resource",
                    None,
                )
            })
            .with_state(state)
    }

    /// Every incident (raw values), oldest first, each with its journal entries.
    fn incidents(&self) -> Vec<Value> {
        self.incident
            .all()
            .map(|inc| {
                let id = text(inc, "sys_id");
                let journal: Vec<&Map<String, Value>> = self
                    .journal
                    .all()
                    .filter(|j| text(j, "element_id") == id)
                    .collect();
                let mut v = Value::Object(inc.clone());
                v["journal"] = json!(journal);
                v
            })
            .collect()
    }

    fn html_fault() -> Response {
        httpsim::html(StatusCode::OK, HIBERNATING)
    }

    fn injected_error(status: StatusCode) -> Response {
        sn_error(
            status,
            "Service Unavailable",
            Some("The instance is temporarily unavailable (injected fault)"),
        )
    }

    fn bad_request(message: &str) -> Response {
        sn_error(StatusCode::BAD_REQUEST, message, None)
    }

    /// Forced 401s (`/api/...` only), `rateLimitNext`, and the `rateLimit` rule, whose headers
    /// every answer in its window carries.
    fn decide(
        f: &mut SnFaults,
        window: &mut RateWindow,
        req: &Request,
    ) -> Result<HeaderMap, Response> {
        let api = req.uri().path().starts_with("/api/");
        let now_epoch = time::OffsetDateTime::now_utc().unix_timestamp();
        let rule = f.rate_limit;
        if api && f.unauthorized_next > 0 {
            f.unauthorized_next -= 1;
            return Err(unauthenticated());
        }
        if api && f.unauthorized {
            return Err(unauthenticated());
        }
        if f.rate_limit_next > 0 {
            f.rate_limit_next -= 1;
            let after = f.retry_after_s.unwrap_or(1);
            return Err(rate_limited(rule, now_epoch + after as i64, after));
        }
        if rule == 0 {
            return Ok(HeaderMap::new());
        }
        let span = Duration::from_millis(f.rate_window_ms.unwrap_or(3_600_000).max(1));
        let now = Instant::now();
        let (start, count) = match *window {
            Some((s, c)) if now.duration_since(s) < span => (s, c + 1),
            _ => (now, 1),
        };
        *window = Some((start, count));
        let left = span.saturating_sub(now.duration_since(start));
        let reset = now_epoch + left.as_secs_f64().ceil() as i64;
        if count > rule {
            let after = left.as_secs_f64().ceil().max(1.0) as u64;
            return Err(rate_limited(rule, reset, after));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("x-ratelimit-limit", rule.to_string()),
            ("x-ratelimit-remaining", (rule - count).to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(k, v);
            }
        }
        Ok(headers)
    }

    fn stats(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, n) in [
            ("incidents", self.incident.len()),
            ("journal", self.journal.len()),
            ("events", self.em_event.len()),
            ("alerts", self.em_alert.len()),
            ("tokens", self.access.len()),
        ] {
            m.insert(k.into(), json!(n));
        }
        m
    }

    /// Empties every table, forgets tokens, restarts numbering.
    fn forget(st: &SnState) {
        let mut d = st.lock();
        *d = SnData::fresh(&st.cfg);
        st.persist(&d);
    }
}

impl SimState<SnData> {
    pub fn new(cfg: SnConfig) -> Arc<SnState> {
        let mut data = SnData::fresh(&cfg);
        if let Some(s) = httpsim::load::<Snapshot>(cfg.persist.as_deref(), "ServiceNow") {
            for (t, rows) in [
                (&mut data.incident, s.incident),
                (&mut data.journal, s.sys_journal_field),
                (&mut data.cmdb_ci, s.cmdb_ci),
                (&mut data.em_event, s.em_event),
                (&mut data.em_alert, s.em_alert),
            ] {
                rows.into_iter().for_each(|r| t.insert(r));
            }
            data.next_number = data.next_number.max(s.next_number);
            data.next_alert = data.next_alert.max(s.next_alert);
        }
        SimState::with_data(cfg, data)
    }

    fn persist(&self, d: &SnData) {
        // Nothing to write: do not build the snapshot (it grows with every incident).
        if self.cfg.persist.is_none() {
            return;
        }
        let rows = |t: &Table| t.all().cloned().collect::<Vec<_>>();
        let snap = Snapshot {
            incident: rows(&d.incident),
            sys_journal_field: rows(&d.journal),
            cmdb_ci: rows(&d.cmdb_ci),
            em_event: rows(&d.em_event),
            em_alert: rows(&d.em_alert),
            next_number: d.next_number,
            next_alert: d.next_alert,
        };
        httpsim::save(self.cfg.persist.as_deref(), &snap, "ServiceNow tables");
    }

    /// The user a call acts as: Basic credentials or a live bearer token.
    fn check_auth(&self, headers: &HeaderMap) -> Result<String, Response> {
        let v = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthenticated)?;
        let (scheme, cred) = v.split_once(' ').ok_or_else(unauthenticated)?;
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => httpsim::basic_user(cred, &self.cfg.users).ok_or_else(unauthenticated),
            "bearer" => {
                let mut i = self.lock();
                match i.access.get(cred.trim()) {
                    Some(t) if t.expires > Instant::now() => Ok(t.user.clone()),
                    Some(_) => {
                        i.access.remove(cred.trim());
                        Err(unauthenticated())
                    }
                    None => Err(unauthenticated()),
                }
            }
            _ => Err(unauthenticated()),
        }
    }
}

// ---------------- OAuth ----------------

fn oauth_denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error_description": "access_denied", "error": "server_error"})),
    )
        .into_response()
}

fn random_token() -> String {
    let mut rng = rand::thread_rng();
    let bytes: Vec<u8> = (0..48).map(|_| rng.gen()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn secs_left(until: Instant) -> u64 {
    until
        .saturating_duration_since(Instant::now())
        .as_secs_f64()
        .ceil() as u64
}

async fn oauth_token(State(st): State<Arc<SnState>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let client_id = field("client_id");
    let Some(client) = st.cfg.oauth_clients.get(client_id) else {
        return oauth_denied();
    };
    if client.secret != field("client_secret") {
        return oauth_denied();
    }
    let now = Instant::now();
    let mut i = st.lock();
    i.access.retain(|_, t| t.expires > now);
    i.refresh.retain(|_, t| t.expires > now);
    let (user, refresh) = match field("grant_type") {
        "client_credentials" => (client.user.clone(), None),
        "password" => {
            let user = field("username");
            if st.cfg.users.get(user).map(String::as_str) != Some(field("password")) {
                return oauth_denied();
            }
            (user.to_string(), None)
        }
        "refresh_token" => match i.refresh.get(field("refresh_token")) {
            Some(t) if t.client_id == client_id => {
                (t.user.clone(), Some(field("refresh_token").to_string()))
            }
            _ => return oauth_denied(),
        },
        _ => return oauth_denied(),
    };
    // Within its lifetime the current access token is answered again.
    let current = i
        .access
        .iter()
        .find(|(_, t)| t.client_id == client_id && t.user == user)
        .map(|(k, t)| (k.clone(), t.expires));
    let (access, expires) = match current {
        Some(c) => c,
        None => {
            let tok = random_token();
            let expires = now + st.cfg.token_lifetime;
            i.access.insert(
                tok.clone(),
                Token {
                    user: user.clone(),
                    client_id: client_id.to_string(),
                    expires,
                },
            );
            (tok, expires)
        }
    };
    let refresh = match refresh {
        Some(r) => r,
        None => {
            let existing = i
                .refresh
                .iter()
                .find(|(_, t)| t.client_id == client_id && t.user == user)
                .map(|(k, _)| k.clone());
            match existing {
                Some(r) => r,
                None => {
                    let r = random_token();
                    i.refresh.insert(
                        r.clone(),
                        Token {
                            user,
                            client_id: client_id.to_string(),
                            expires: now + st.cfg.refresh_lifetime,
                        },
                    );
                    r
                }
            }
        }
    };
    Json(json!({
        "access_token": access,
        "refresh_token": refresh,
        "scope": "useraccount",
        "token_type": "Bearer",
        "expires_in": secs_left(expires),
    }))
    .into_response()
}

// ---------------- Table API ----------------

/// Query-string parameters, decoded, in order.
fn params(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn flag(p: &[(String, String)], k: &str) -> bool {
    param(p, k).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn base_url(st: &SnState, headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("{}://{host}", if st.cfg.tls { "https" } else { "http" })
}

/// How a record is rendered: `sysparm_fields`, reference links.
struct View {
    fields: Option<Vec<String>>,
    links: Option<String>,
}

impl View {
    fn new(st: &SnState, headers: &HeaderMap, p: &[(String, String)]) -> View {
        View {
            fields: param(p, "sysparm_fields").map(|f| {
                f.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            links: (!flag(p, "sysparm_exclude_reference_link")).then(|| base_url(st, headers)),
        }
    }

    fn render(&self, kind: Kind, rec: &Map<String, Value>) -> Value {
        let mut out = Map::new();
        let mut put = |k: &str, v: &Value| {
            let s = v.as_str().unwrap_or("");
            match (&self.links, kind.reference(k)) {
                (Some(base), Some(table)) if !s.is_empty() => {
                    out.insert(
                        k.to_string(),
                        json!({"link": format!("{base}/api/now/table/{table}/{s}"), "value": s}),
                    );
                }
                _ => {
                    out.insert(k.to_string(), v.clone());
                }
            }
        };
        match &self.fields {
            Some(list) => {
                for f in list {
                    if let Some(v) = rec.get(f) {
                        put(f, v);
                    }
                }
            }
            None => {
                for (k, v) in rec {
                    put(k, v);
                }
            }
        }
        Value::Object(out)
    }
}

/// The `{version}`, `{table}` and `{sys_id}` of a Table API path,
/// `/api/now[/{version}]/table/{table}[/{sys_id}]`; a version other than v1 or v2 is refused.
#[derive(Debug, Deserialize)]
struct TablePath {
    #[serde(default)]
    version: Option<String>,
    table: String,
    #[serde(default)]
    sys_id: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TablePath {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let Path(p) = Path::<TablePath>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match p.version.as_deref() {
            None | Some("v1" | "v2") => Ok(p),
            Some(_) => Err(sn_error(
                StatusCode::BAD_REQUEST,
                "Requested URI does not represent any resource",
                None,
            )),
        }
    }
}

impl TablePath {
    /// `v1/`, `v2/` or nothing, as the call's path had it.
    fn prefix(&self) -> String {
        self.version
            .as_ref()
            .map(|v| format!("{v}/"))
            .unwrap_or_default()
    }
}

/// The user a Table API call acts as and the table it is on (401, then 400 for an unknown table).
fn table_call(st: &SnState, headers: &HeaderMap, table: &str) -> Result<(String, Kind), Response> {
    let user = st.check_auth(headers)?;
    let kind = Kind::from_name(table).ok_or_else(|| {
        sn_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid table {table}"),
            None,
        )
    })?;
    Ok((user, kind))
}

/// The user of a write (`action`: Insert, Update, Delete): only `incident` takes writes.
fn incident_write(
    st: &SnState,
    headers: &HeaderMap,
    table: &str,
    action: &str,
) -> Result<String, Response> {
    match table_call(st, headers, table)? {
        (user, Kind::Incident) => Ok(user),
        _ => Err(acl(action)),
    }
}

/// A create or an update (`action`: Insert, Update): the user, the fields, and how the answer
/// renders the record.
fn incident_fields(
    st: &SnState,
    path: &TablePath,
    headers: &HeaderMap,
    q: &Option<String>,
    body: &Bytes,
    action: &str,
) -> Result<(String, Map<String, Value>, View), Response> {
    let user = incident_write(st, headers, &path.table, action)?;
    let fields = parse_fields(body)?;
    Ok((user, fields, View::new(st, headers, &params(q))))
}

/// The columns of a table (cmdb_ci: also every field a seeded CI has).
fn has_field(inner: &SnData, kind: Kind) -> HashSet<String> {
    let mut cols: HashSet<String> = kind.columns().iter().map(|s| s.to_string()).collect();
    if kind == Kind::CmdbCi {
        for r in inner.cmdb_ci.all() {
            cols.extend(r.keys().cloned());
        }
    }
    cols
}

async fn list(
    State(st): State<Arc<SnState>>,
    path: TablePath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, Response> {
    let (_, kind) = table_call(&st, &headers, &path.table)?;
    let p = params(&q);
    let view = View::new(&st, &headers, &p);
    let limit = param(&p, "sysparm_limit")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(10_000);
    let offset = param(&p, "sysparm_offset")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let (page, total) = {
        let i = st.lock();
        let cols = has_field(&i, kind);
        let known = |f: &str| cols.contains(f);
        let query = match param(&p, "sysparm_query") {
            Some(text) => Query::parse(text, &known),
            // Without sysparm_query, `field=value` parameters naming columns filter the list.
            None => {
                let enc: Vec<String> = p
                    .iter()
                    .filter(|(k, _)| !k.starts_with("sysparm_") && known(k))
                    .map(|(k, v)| format!("{k}={}", v.replace('^', "^^")))
                    .collect();
                Query::parse(&enc.join("^"), &known)
            }
        };
        let mut rows: Vec<Map<String, Value>> =
            if !query.dropped.is_empty() && st.cfg.invalid_query_returns_no_rows {
                Vec::new()
            } else {
                i.table(kind)
                    .all()
                    .filter(|r| query.matches(r))
                    .cloned()
                    .collect()
            };
        query.sort(&mut rows);
        let total = rows.len();
        let page: Vec<Value> = rows
            .iter()
            .skip(offset)
            .take(limit)
            .map(|r| view.render(kind, r))
            .collect();
        (page, total)
    };
    // Version 1 answers an empty result 404, version 2 (the default) 200 with `[]`.
    if page.is_empty() && path.version.as_deref() == Some("v1") {
        return Err(not_found());
    }
    let mut resp = Json(json!({ "result": page })).into_response();
    let h = resp.headers_mut();
    if !flag(&p, "sysparm_no_count") {
        if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
            h.insert("x-total-count", v);
        }
    }
    if !flag(&p, "sysparm_suppress_pagination_header") {
        let link = link_header(
            &base_url(&st, &headers),
            &format!("/api/now/{}table/{}", path.prefix(), path.table),
            &p,
            limit,
            offset,
            total,
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert("link", v);
        }
    }
    Ok(resp)
}

/// `Link: <...>;rel="first",<...>;rel="prev",<...>;rel="next",<...>;rel="last"`.
fn link_header(
    base: &str,
    path: &str,
    p: &[(String, String)],
    limit: usize,
    offset: usize,
    total: usize,
) -> String {
    let url = |off: usize| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in p {
            if k != "sysparm_offset" && k != "sysparm_limit" {
                s.append_pair(k, v);
            }
        }
        s.append_pair("sysparm_limit", &limit.to_string());
        s.append_pair("sysparm_offset", &off.to_string());
        format!("<{base}{path}?{}>", s.finish())
    };
    let last = if total == 0 {
        0
    } else {
        ((total - 1) / limit) * limit
    };
    let mut parts = vec![format!("{};rel=\"first\"", url(0))];
    if offset > 0 {
        parts.push(format!(
            "{};rel=\"prev\"",
            url(offset.saturating_sub(limit))
        ));
    }
    if offset + limit < total {
        parts.push(format!("{};rel=\"next\"", url(offset + limit)));
    }
    parts.push(format!("{};rel=\"last\"", url(last)));
    parts.join(",")
}

async fn get_one(
    State(st): State<Arc<SnState>>,
    path: TablePath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, Response> {
    let (_, kind) = table_call(&st, &headers, &path.table)?;
    let view = View::new(&st, &headers, &params(&q));
    let rec = st.lock().table(kind).get(&path.sys_id).cloned();
    let rec = rec.ok_or_else(not_found)?;
    Ok(Json(json!({"result": view.render(kind, &rec)})).into_response())
}

fn parse_fields(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad_body()),
    }
}

/// priority from impact × urgency, as the instance's priority lookup.
fn priority(impact: &str, urgency: &str) -> &'static str {
    let n = |s: &str| s.parse::<u8>().unwrap_or(3).clamp(1, 3);
    match n(impact) + n(urgency) {
        2 => "1",
        3 => "2",
        4 => "3",
        5 => "4",
        _ => "5",
    }
}

/// A journal entry to write: (element, value).
type Entries = Vec<(String, String)>;

/// Applies `fields`, written by `user`, to an incident with the instance's rules: read-only
/// and unknown fields ignored, journal fields turned into entries, priority computed, the
/// state machine (data policy on resolve/close, resolved/closed stamps, reopen), `active`.
/// `rec` is left unchanged when the write is refused.
fn apply_incident(
    cfg: &SnConfig,
    rec: &mut Map<String, Value>,
    fields: &Map<String, Value>,
    user: &str,
    insert: bool,
) -> Result<Entries, Response> {
    let old_state = text(rec, "state").to_string();
    if !insert && (old_state == "7" || old_state == "8") {
        return Err(acl("Update"));
    }
    let mut next = rec.clone();
    let mut entries = Vec::new();
    for (k, v) in fields {
        if JOURNAL_ELEMENTS.contains(&k.as_str()) {
            let t = to_text(v);
            if !t.trim().is_empty() {
                entries.push((k.clone(), t));
            }
            continue;
        }
        if k.starts_with("sys_")
            || READ_ONLY.contains(&k.as_str())
            || !INCIDENT_FIELDS.contains(&k.as_str())
        {
            continue;
        }
        next.insert(k.clone(), json!(to_text(v)));
    }
    let p = priority(text(&next, "impact"), text(&next, "urgency"));
    next.insert("priority".into(), json!(p));
    let now = sn_now();
    let uid = user_sys_id(user);
    let state = text(&next, "state").to_string();
    if insert || state != old_state {
        match state.as_str() {
            "6" | "7" => {
                if cfg.require_close_fields {
                    let missing: Vec<&str> = [
                        ("close_code", "Resolution code"),
                        ("close_notes", "Resolution notes"),
                    ]
                    .iter()
                    .filter(|(f, _)| text(&next, f).trim().is_empty())
                    .map(|(_, label)| *label)
                    .collect();
                    if !missing.is_empty() {
                        return Err(sn_error(
                            StatusCode::FORBIDDEN,
                            "Operation Failed",
                            Some(&format!(
                                "Data Policy Exception: \n\tThe following fields are mandatory: {}\n",
                                missing.join(", ")
                            )),
                        ));
                    }
                }
                if state == "7" {
                    next.insert("closed_at".into(), json!(now));
                    next.insert("closed_by".into(), json!(uid));
                }
                if state == "6" || text(&next, "resolved_at").is_empty() {
                    next.insert("resolved_at".into(), json!(now));
                    next.insert("resolved_by".into(), json!(uid));
                }
            }
            "1" | "2" | "3" if !insert && old_state == "6" => {
                let n = text(&next, "reopen_count").parse::<u64>().unwrap_or(0) + 1;
                next.insert("reopen_count".into(), json!(n.to_string()));
                next.insert("reopened_by".into(), json!(uid));
                next.insert("reopened_time".into(), json!(now));
                next.insert("resolved_at".into(), json!(""));
                next.insert("resolved_by".into(), json!(""));
            }
            _ => {}
        }
    }
    let active = !(state == "7" || state == "8");
    next.insert("active".into(), json!(active.to_string()));
    next.insert("incident_state".into(), json!(state));
    if !insert {
        let n = text(&next, "sys_mod_count").parse::<u64>().unwrap_or(0) + 1;
        next.insert("sys_mod_count".into(), json!(n.to_string()));
        next.insert("sys_updated_on".into(), json!(now));
        next.insert("sys_updated_by".into(), json!(user));
    }
    *rec = next;
    Ok(entries)
}

fn journal_rows(inner: &mut SnData, sys_id: &str, entries: Entries, user: &str) {
    let now = sn_now();
    for (element, value) in entries {
        let mut row = Map::new();
        for (k, v) in [
            ("sys_id", new_sys_id()),
            ("element", element),
            ("element_id", sys_id.to_string()),
            ("name", "incident".to_string()),
            ("value", value),
            ("sys_created_on", now.clone()),
            ("sys_created_by", user.to_string()),
            ("sys_tags", String::new()),
        ] {
            row.insert(k.into(), json!(v));
        }
        inner.journal.insert(row);
    }
}

fn new_incident(user: &str) -> Map<String, Value> {
    let mut rec = Map::new();
    for f in INCIDENT_FIELDS {
        rec.insert((*f).into(), json!(""));
    }
    for (k, v) in INCIDENT_DEFAULTS {
        rec.insert((*k).into(), json!(v));
    }
    let now = sn_now();
    for (k, v) in [
        ("sys_id", new_sys_id()),
        ("opened_at", now.clone()),
        ("opened_by", user_sys_id(user)),
        ("sys_created_on", now.clone()),
        ("sys_created_by", user.to_string()),
        ("sys_updated_on", now),
        ("sys_updated_by", user.to_string()),
    ] {
        rec.insert(k.into(), json!(v));
    }
    rec
}

async fn create(
    State(st): State<Arc<SnState>>,
    path: TablePath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, Response> {
    let (user, fields, view) = incident_fields(&st, &path, &headers, &q, &body, "Insert")?;
    let rec = {
        let mut i = st.lock();
        let mut rec = new_incident(&user);
        let entries = apply_incident(&st.cfg, &mut rec, &fields, &user, true)?;
        let number = format!("INC{:07}", i.next_number);
        i.next_number += 1;
        rec.insert("number".into(), json!(number));
        let sys_id = text(&rec, "sys_id").to_string();
        i.incident.insert(rec.clone());
        journal_rows(&mut i, &sys_id, entries, &user);
        st.persist(&i);
        rec
    };
    let sys_id = text(&rec, "sys_id").to_string();
    tracing::debug!(incident = %text(&rec, "number"), %sys_id, "incident created");
    let location = format!(
        "{}/api/now/{}table/incident/{sys_id}",
        base_url(&st, &headers),
        path.prefix()
    );
    // The incident is stored (and persisted) whatever the answer is now.
    if let Some(fault) = st.take_create_fault() {
        let no_id = || {
            let mut v = view.render(Kind::Incident, &rec);
            if let Some(o) = v.as_object_mut() {
                o.remove("sys_id");
            }
            (StatusCode::CREATED, Json(json!({ "result": v }))).into_response()
        };
        if let Some(r) = fault.answer(StatusCode::CREATED, HIBERNATING, no_id).await {
            return Ok(r);
        }
    }
    let mut resp = if no_body(&headers) {
        StatusCode::CREATED.into_response()
    } else {
        (
            StatusCode::CREATED,
            Json(json!({"result": view.render(Kind::Incident, &rec)})),
        )
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

fn no_body(headers: &HeaderMap) -> bool {
    headers
        .get("x-no-response-body")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn update(
    State(st): State<Arc<SnState>>,
    path: TablePath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, Response> {
    let (user, fields, view) = incident_fields(&st, &path, &headers, &q, &body, "Update")?;
    let rec = write(&st, &path.sys_id, &fields, &user)?;
    Ok(if no_body(&headers) {
        StatusCode::OK.into_response()
    } else {
        Json(json!({"result": view.render(Kind::Incident, &rec)})).into_response()
    })
}

/// Writes fields to an incident (by sys_id or number) as `user`; the record after the write.
fn write(
    st: &SnState,
    id: &str,
    fields: &Map<String, Value>,
    user: &str,
) -> Result<Map<String, Value>, Response> {
    let mut i = st.lock();
    let sys_id = if i.incident.get(id).is_some() {
        id.to_string()
    } else {
        i.incident
            .all()
            .find(|r| text(r, "number") == id)
            .map(|r| text(r, "sys_id").to_string())
            .ok_or_else(not_found)?
    };
    let rec = i.incident.get_mut(&sys_id).ok_or_else(not_found)?;
    let entries = apply_incident(&st.cfg, rec, fields, user, false)?;
    let out = rec.clone();
    journal_rows(&mut i, &sys_id, entries, user);
    st.persist(&i);
    Ok(out)
}

async fn delete(
    State(st): State<Arc<SnState>>,
    path: TablePath,
    headers: HeaderMap,
) -> Result<Response, Response> {
    incident_write(&st, &headers, &path.table, "Delete")?;
    let mut i = st.lock();
    i.incident.remove(&path.sys_id).ok_or_else(not_found)?;
    st.persist(&i);
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------- Event Management ----------------

/// `POST /api/global/em/jsonv2 {"records": [...]}`: events into `em_event`, de-duplicated into
/// `em_alert` by `message_key` (default `source+node+type+resource+metric_name`); severity 0
/// (Clear) or `resolution_state: Closing` closes the open alert.
async fn em_jsonv2(State(st): State<Arc<SnState>>, headers: HeaderMap, body: Bytes) -> Response {
    let user = match st.check_auth(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let records = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("records").and_then(Value::as_array) {
            Some(r) => r.clone(),
            None => {
                return sn_error(
                    StatusCode::BAD_REQUEST,
                    "Exception while reading request",
                    Some("The payload must be {\"records\": [...]}"),
                )
            }
        },
        Err(_) => return bad_body(),
    };
    let mut i = st.lock();
    let mut inserted = 0;
    for r in records {
        let Some(fields) = r.as_object() else {
            continue;
        };
        insert_event(&mut i, fields, &user);
        inserted += 1;
    }
    st.persist(&i);
    drop(i);
    Json(json!({"result": {"Default Bulk Endpoint": format!("{inserted} events were inserted")}}))
        .into_response()
}

fn insert_event(i: &mut SnData, fields: &Map<String, Value>, user: &str) {
    let now = sn_now();
    let mut ev = Map::new();
    for f in EVENT_FIELDS {
        ev.insert((*f).into(), json!(""));
    }
    for (k, v) in fields {
        if EVENT_FIELDS.contains(&k.as_str()) && !k.starts_with("sys_") {
            let t = match (k.as_str(), v) {
                ("additional_info", Value::Object(_)) => v.to_string(),
                _ => to_text(v),
            };
            ev.insert(k.clone(), json!(t));
        }
    }
    if text(&ev, "message_key").is_empty() {
        let key: String = ["source", "node", "type", "resource", "metric_name"]
            .iter()
            .map(|f| text(&ev, f))
            .collect();
        ev.insert("message_key".into(), json!(key));
    }
    if text(&ev, "resolution_state").is_empty() {
        ev.insert("resolution_state".into(), json!("New"));
    }
    let sys_id = new_sys_id();
    for (k, v) in [
        ("sys_id", sys_id.clone()),
        ("sys_created_on", now.clone()),
        ("sys_created_by", user.to_string()),
        ("sys_updated_on", now.clone()),
        ("sys_updated_by", user.to_string()),
    ] {
        ev.insert(k.into(), json!(v));
    }
    let node = text(&ev, "node").to_string();
    if let Some(ci) = i
        .cmdb_ci
        .all()
        .find(|c| !node.is_empty() && text(c, "name") == node)
    {
        let ci = text(ci, "sys_id").to_string();
        ev.insert("cmdb_ci".into(), json!(ci));
    }
    let severity = text(&ev, "severity").to_string();
    let key = text(&ev, "message_key").to_string();
    let (state, alert, notes) = if !matches!(severity.as_str(), "0" | "1" | "2" | "3" | "4" | "5") {
        (
            "Error",
            String::new(),
            format!("Invalid severity {severity:?}: expected 0 (Clear) to 5 (OK)"),
        )
    } else {
        let closing = severity == "0" || text(&ev, "resolution_state") == "Closing";
        let open = i
            .em_alert
            .all()
            .find(|a| text(a, "message_key") == key && text(a, "state") != "Closed")
            .map(|a| text(a, "sys_id").to_string());
        match (open, closing) {
            (Some(a), _) => {
                if let Some(alert) = i.em_alert.get_mut(&a) {
                    let count = text(alert, "event_count").parse::<u64>().unwrap_or(0) + 1;
                    let mods = text(alert, "sys_mod_count").parse::<u64>().unwrap_or(0) + 1;
                    for (k, v) in [
                        ("event_count", count.to_string()),
                        ("sys_mod_count", mods.to_string()),
                        ("severity", severity.clone()),
                        ("last_event", sys_id.clone()),
                        ("last_remote_time", text(&ev, "time_of_event").to_string()),
                        ("sys_updated_on", now.clone()),
                        ("sys_updated_by", user.to_string()),
                    ] {
                        alert.insert(k.into(), json!(v));
                    }
                    if !text(&ev, "description").is_empty() {
                        alert.insert("description".into(), ev["description"].clone());
                    }
                    if closing {
                        alert.insert("state".into(), json!("Closed"));
                    }
                }
                ("Processed", a, String::new())
            }
            (None, true) => (
                "Processed",
                String::new(),
                "No open alert with this message key: nothing to close".to_string(),
            ),
            (None, false) => {
                let mut alert = Map::new();
                for f in ALERT_FIELDS {
                    alert.insert((*f).into(), ev.get(*f).cloned().unwrap_or(json!("")));
                }
                let a = new_sys_id();
                for (k, v) in [
                    ("sys_id", a.clone()),
                    ("number", format!("Alert{:07}", i.next_alert)),
                    ("state", "Open".to_string()),
                    ("event_count", "1".to_string()),
                    ("sys_mod_count", "0".to_string()),
                    ("initial_event", sys_id.clone()),
                    ("last_event", sys_id.clone()),
                    (
                        "initial_remote_time",
                        text(&ev, "time_of_event").to_string(),
                    ),
                    ("last_remote_time", text(&ev, "time_of_event").to_string()),
                ] {
                    alert.insert(k.into(), json!(v));
                }
                i.next_alert += 1;
                i.em_alert.insert(alert);
                ("Processed", a, String::new())
            }
        }
    };
    ev.insert("state".into(), json!(state));
    ev.insert("alert".into(), json!(alert));
    ev.insert("processing_notes".into(), json!(notes));
    i.em_event.insert(ev);
}

// ---------------- control routes ----------------

fn sim_bad(msg: &str) -> Response {
    sn_error(StatusCode::BAD_REQUEST, msg, None)
}

/// `POST /sim/incidents/{sys_id|number}/{resolve|close|cancel|reopen|update}`: a person acting
/// on the incident in the instance's UI. Body (optional): `{"user": "jdoe", <fields>...}`;
/// resolve and close fill `close_code`/`close_notes` when the body has none.
async fn sim_act(
    State(st): State<Arc<SnState>>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut fields = if body.is_empty() {
        Map::new()
    } else {
        match parse_fields(&body) {
            Ok(f) => f,
            Err(_) => return sim_bad("the body must be a JSON object"),
        }
    };
    let user = fields
        .remove("user")
        .map(|u| to_text(&u))
        .unwrap_or_else(|| "sim.human".into());
    let state = match action.as_str() {
        "resolve" => Some("6"),
        "close" => Some("7"),
        "cancel" => Some("8"),
        "reopen" => Some("2"),
        "update" => None,
        _ => return sim_bad(&format!("unknown action {action}")),
    };
    if let Some(s) = state {
        fields.entry("state").or_insert(json!(s));
        if s == "6" || s == "7" {
            fields
                .entry("close_code")
                .or_insert(json!("Solved (Permanently)"));
            fields
                .entry("close_notes")
                .or_insert(json!(format!("Resolved by {user}")));
        }
    }
    match write(&st, &id, &fields, &user) {
        Ok(rec) => Json(json!({ "result": rec })).into_response(),
        Err(r) => r,
    }
}

/// `POST /sim/cmdb_ci {"name": "Encl1", ...}`: seeds a CI (any fields).
async fn sim_seed_ci(State(st): State<Arc<SnState>>, body: Bytes) -> Response {
    let fields = match parse_fields(&body) {
        Ok(f) => f,
        Err(_) => return sim_bad("the body must be a JSON object"),
    };
    let mut ci = Map::new();
    for f in CI_FIELDS {
        ci.insert((*f).into(), json!(""));
    }
    let now = sn_now();
    for (k, v) in [
        ("sys_class_name", "cmdb_ci".to_string()),
        ("operational_status", "1".to_string()),
        ("install_status", "1".to_string()),
        ("sys_domain", "global".to_string()),
        ("sys_mod_count", "0".to_string()),
        ("sys_created_on", now.clone()),
        ("sys_updated_on", now),
        ("sys_created_by", "admin".to_string()),
        ("sys_updated_by", "admin".to_string()),
    ] {
        ci.insert(k.into(), json!(v));
    }
    for (k, v) in &fields {
        ci.insert(k.clone(), json!(to_text(v)));
    }
    if text(&ci, "sys_id").is_empty() {
        ci.insert("sys_id".into(), json!(new_sys_id()));
    }
    let mut i = st.lock();
    if i.cmdb_ci.get(text(&ci, "sys_id")).is_some() {
        return sim_bad("a CI with this sys_id exists");
    }
    i.cmdb_ci.insert(ci.clone());
    st.persist(&i);
    (StatusCode::CREATED, Json(json!({ "result": ci }))).into_response()
}

async fn sim_cis(State(st): State<Arc<SnState>>) -> Response {
    let cis: Vec<Map<String, Value>> = st.lock().cmdb_ci.all().cloned().collect();
    Json(json!({ "cis": cis })).into_response()
}

async fn sim_events(State(st): State<Arc<SnState>>) -> Response {
    let i = st.lock();
    let events: Vec<&Map<String, Value>> = i.em_event.all().collect();
    let alerts: Vec<&Map<String, Value>> = i.em_alert.all().collect();
    Json(json!({"events": events, "alerts": alerts})).into_response()
}

/// `POST /sim/tokens/expire`: every access token stops working (refresh tokens still do).
async fn sim_expire_tokens(State(st): State<Arc<SnState>>) -> Response {
    let mut i = st.lock();
    let n = i.access.len();
    i.access.clear();
    Json(json!({ "expired": n })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_follows_the_impact_urgency_matrix() {
        assert_eq!(priority("1", "1"), "1");
        assert_eq!(priority("1", "2"), "2");
        assert_eq!(priority("2", "2"), "3");
        assert_eq!(priority("3", "2"), "4");
        assert_eq!(priority("3", "3"), "5");
        assert_eq!(priority("x", ""), "5");
    }

    #[test]
    fn link_header_has_first_prev_next_last() {
        let p = vec![("sysparm_query".to_string(), "active=true".to_string())];
        let l = link_header("http://h", "/api/now/table/incident", &p, 2, 2, 5);
        assert!(l.contains("sysparm_offset=0>;rel=\"first\""), "{l}");
        assert!(l.contains("sysparm_offset=0>;rel=\"prev\""), "{l}");
        assert!(l.contains("sysparm_offset=4>;rel=\"next\""), "{l}");
        assert!(l.contains("sysparm_offset=4>;rel=\"last\""), "{l}");
        assert!(l.contains("sysparm_query=active%3Dtrue"), "{l}");
        let l = link_header("http://h", "/x", &[], 2, 4, 5);
        assert!(!l.contains("next"), "{l}");
    }

    #[test]
    fn user_sys_ids_are_stable_32_hex() {
        let a = user_sys_id("admin");
        assert_eq!(a, user_sys_id("admin"));
        assert_ne!(a, user_sys_id("jdoe"));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
