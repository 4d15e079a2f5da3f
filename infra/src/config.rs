//! A function's settings, read once from the environment at start.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `PORT` | port to listen on (Cloud Run sets it) | the function's local port |
//! | `GOOGLE_CLOUD_PROJECT` | project id | `saga-local` on the emulators, required otherwise |
//! | `PUBSUB_EMULATOR_HOST` | `host:port` of the Pub/Sub emulator | Google Cloud |
//! | `FIRESTORE_EMULATOR_HOST` | `host:port` of the Firestore emulator | Google Cloud |
//! | `SAGA_FAULT_INJECTION` | honour the `payment-error` fault switch (`true`/`false`) | `false` |
//! | `SAGA_CHAOS` | honour a request's `X-Saga-Chaos` fault (`saga chaos`); refused off the emulators | `false` |
//! | `SAGA_BIND` | address to listen on | `127.0.0.1` on the emulators, `0.0.0.0` otherwise |
//! | `SAGA_PUSH_AUDIENCE` | audience of push tokens (the service URL); turns push auth on | none |
//! | `SAGA_PUSH_SERVICE_ACCOUNT` | the push service account's email; with the audience | none |
//! | `SAGA_PUSH_JWKS_URL` | where the token signing keys are | Google's |
//! | `SAGA_PUSH_IAM_FRONTED` | `true`: only reachable through Cloud Run's invoker check, so a token whose signature Cloud Run removed is accepted after its claims are checked | `false` |
//! | `SAGA_PUSH_AUTH` | `disabled` turns push auth off explicitly | on in the cloud |
//! | `SAGA_TIMEOUT_SECS` | a saga not terminal after this long is failed (`timeout`) | 300 |
//! | `SAGA_OUTBOX_GRACE_SECS` | the frontend's sweep publishes again the event of an order PENDING longer than this | 30 |
//! | `SAGA_SWEEP_INTERVAL_SECS` | run the sweep on a timer in-process (`saga up`) | off |
//! | `SAGA_USER_AUTH` | `firebase`: `POST /order`, `GET /order/{id}` and the live stream need a Firebase Authentication / Identity Platform ID token of the project | `off` |
//! | `SAGA_USER_AUTH_PROJECT` | the project whose users sign in (the ID tokens' audience) | `GOOGLE_CLOUD_PROJECT` |
//! | `FIREBASE_AUTH_EMULATOR_HOST` | the Firebase Authentication emulator's `host:port`: its unsigned tokens are accepted (never set it in the cloud) | none |
//! | `SAGA_USER_AUTH_JWKS_URL` | where the ID tokens' signing keys are | Google's (securetoken) |
//! | `SAGA_WEB_API_KEY` | the browser API key the page signs users in with | none |
//! | `SAGA_POST_RATE`, `SAGA_POST_BURST` | orders a second each client may place, and at once | 5, 20 |
//! | `SAGA_STREAMS_MAX` | live streams an instance holds open at most | 100 |
//! | `SAGA_STREAM_MAX_SECS` | how long one live stream stays open (the page reconnects) | 900 |
//! | `SAGA_REQUEST_TIMEOUT_SECS` | longest a request may take before it is answered 503 | 30 |
//! | `SAGA_EVENT_VERSION` | speak only this event schema version: write it, and read nothing newer (the previous release's behaviour, for a rolling-deploy test) | the current one |
//! | `SAGA_EMIT_EVENT_VERSION` | write events in this schema version, still reading every version this build knows (during a rollout: docs/evolving.md) | `SAGA_EVENT_VERSION`, else the current one |
//! | `SAGA_ORDER_LAYOUT` | `listed`: write an order's step records one map each, as revisions before the packed layout read them, still reading both (the pin of a rollout: docs/evolving.md) | `packed` |
//! | `SAGA_TRUST_FORWARDED` | `true`: the client's address is the last `X-Forwarded-For` entry (Cloud Run's front end appends it) | `false` |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | export spans over OTLP to this base URL (`/v1/traces` is appended); on `*.googleapis.com` (the Telemetry API, Cloud Trace's OTLP endpoint) with Application Default Credentials | none: nothing exported |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the same, the full URL of the traces endpoint (used as is; wins over the base) | none |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` | `http/protobuf`, the only one supported: any other refuses to start | `http/protobuf` |
//!
//! Push authentication is required when not on the emulators: a function in the cloud with
//! neither the audience and account nor an explicit `SAGA_PUSH_AUTH=disabled` refuses to start.

use std::net::IpAddr;
use std::time::Duration;

use crate::events::wire::{self, EventVersions};
use crate::order::Layout;
use crate::push_auth::{GOOGLE_JWKS_URL, OidcSettings};

/// Where Firebase Authentication / Identity Platform publishes the keys its ID tokens are
/// signed with (the JWK form of its x509 certificates).
pub const FIREBASE_JWKS_URL: &str =
    "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";
use crate::topology::Function;

pub const DEFAULT_LOCAL_PROJECT: &str = "saga-local";

/// Where a Google service is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An emulator at `host:port`, without credentials.
    Emulator(String),
    /// Google Cloud, with Application Default Credentials.
    Cloud,
}

impl Endpoint {
    pub fn is_emulator(&self) -> bool {
        matches!(self, Endpoint::Emulator(_))
    }
}

/// Whether push deliveries must carry a valid Google OIDC token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushAuth {
    /// The emulators send no token; in the cloud only by explicit choice.
    Disabled,
    Oidc(OidcSettings),
}

/// Whether the frontend's users must sign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAuth {
    /// Anyone may order for any user and see any order (the emulators, by default).
    Off,
    Firebase(FirebaseAuth),
}

/// Firebase Authentication / Identity Platform ID tokens of one project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirebaseAuth {
    /// The token's audience, and its issuer's suffix.
    pub project_id: String,
    pub jwks_url: String,
    /// The Firebase Authentication emulator's tokens are unsigned: accepted only when this
    /// is set (as Firebase's Admin SDKs accept them only with `FIREBASE_AUTH_EMULATOR_HOST`).
    pub emulator: Option<String>,
    /// The browser API key the page signs users in with (Identity Platform's REST API).
    pub web_api_key: Option<String>,
}

/// The frontend's limits (see `functions/frontend/src/limits.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A client may place one order every `post_every` (its sustained rate)...
    pub post_every: Duration,
    /// ...and this many at once.
    pub post_burst: u32,
    pub streams_max: usize,
    pub stream_max: Duration,
    pub request_timeout: Duration,
    pub trust_forwarded: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            post_every: Duration::from_millis(200),
            post_burst: 20,
            streams_max: 100,
            stream_max: Duration::from_secs(900),
            request_timeout: Duration::from_secs(30),
            trust_forwarded: false,
        }
    }
}

/// Where spans are exported (OTLP over HTTP, protobuf bodies): see [`crate::spans`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Otlp {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub traces_url: String,
    /// Send Google credentials (Application Default Credentials) with each export: the
    /// endpoint is Google's (`*.googleapis.com`, the Telemetry API).
    pub google_auth: bool,
}

impl Otlp {
    /// An endpoint without credentials (a local collector, a test's receiver): spans are
    /// POSTed to `{base}/v1/traces`.
    pub fn at(base: &str) -> Otlp {
        Otlp {
            traces_url: format!("{}/v1/traces", base.trim_end_matches('/')),
            google_auth: false,
        }
    }
}

/// The only OTLP protocol this build speaks.
pub const OTLP_PROTOCOL: &str = "http/protobuf";

/// Faults injected on purpose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Stop right after a step's transaction commits, before publishing (as if the instance
    /// died there): the outbox sweep or a redelivery must publish the event. Tests only,
    /// never read from the environment.
    pub crash_after_commit: bool,
    /// Honour a request's `X-Saga-Chaos` fault ([`crate::chaos`]): `SAGA_CHAOS=true`, on
    /// the emulators only.
    pub chaos: bool,
}

impl Faults {
    /// Whether to stop now, right after a commit, as if the instance died there: always
    /// with `crash_after_commit`, or once when the request asked for it.
    pub fn crash_after_commit_now(&self) -> bool {
        self.crash_after_commit || crate::chaos::take(crate::chaos::Fault::CrashAfterCommit)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub project_id: String,
    pub pubsub: Endpoint,
    pub firestore: Endpoint,
    pub fault_injection: bool,
    pub bind: IpAddr,
    pub port: u16,
    pub push_auth: PushAuth,
    /// A saga not terminal this long after its last change is failed with `timeout`.
    pub saga_timeout: Duration,
    /// The frontend's sweep publishes again the event of an order PENDING longer than this.
    pub outbox_grace: Duration,
    /// Run the sweep in-process on this interval (locally; in the cloud a scheduler calls it).
    pub sweep_interval: Option<Duration>,
    pub user_auth: UserAuth,
    pub limits: Limits,
    pub faults: Faults,
    /// The event schema versions it writes and reads ([`crate::events::wire`]).
    pub event_versions: EventVersions,
    /// How it writes an order's step records (it reads both layouts).
    pub order_layout: Layout,
    /// Export spans here; `None`: nothing is exported (the logs still carry the trace).
    pub otlp: Option<Otlp>,
}

pub const DEFAULT_SAGA_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_OUTBOX_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("GOOGLE_CLOUD_PROJECT must be set when not running on the emulators")]
    MissingProject,
    #[error(
        "push authentication is required in the cloud: set SAGA_PUSH_AUDIENCE and \
         SAGA_PUSH_SERVICE_ACCOUNT (or SAGA_PUSH_AUTH=disabled to turn it off explicitly)"
    )]
    PushAuthRequired,
    #[error("{0} is set without {1}: push authentication needs both")]
    PushAuthIncomplete(&'static str, &'static str),
}

impl Config {
    /// A configuration for the emulators (used by `saga up` and the tests).
    pub fn emulators(project_id: &str, pubsub_host: &str, firestore_host: &str) -> Config {
        Config {
            project_id: project_id.to_owned(),
            pubsub: Endpoint::Emulator(pubsub_host.to_owned()),
            firestore: Endpoint::Emulator(firestore_host.to_owned()),
            fault_injection: false,
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            push_auth: PushAuth::Disabled,
            saga_timeout: DEFAULT_SAGA_TIMEOUT,
            outbox_grace: DEFAULT_OUTBOX_GRACE,
            sweep_interval: None,
            user_auth: UserAuth::Off,
            limits: Limits::default(),
            faults: Faults::default(),
            event_versions: EventVersions::default(),
            order_layout: Layout::default(),
            otlp: None,
        }
    }

    pub fn from_env(function: Function) -> Result<Config, ConfigError> {
        Config::from_vars(function, |name| std::env::var(name).ok())
    }

    /// Reads the settings through `var`, so the rules can be tested without touching the
    /// process environment.
    pub fn from_vars(
        function: Function,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoint = |name| set(name).map_or(Endpoint::Cloud, Endpoint::Emulator);
        let pubsub = endpoint("PUBSUB_EMULATOR_HOST");
        let firestore = endpoint("FIRESTORE_EMULATOR_HOST");
        let local = pubsub.is_emulator() && firestore.is_emulator();
        let project_id = match set("GOOGLE_CLOUD_PROJECT") {
            Some(p) => p,
            None if local => DEFAULT_LOCAL_PROJECT.to_owned(),
            None => return Err(ConfigError::MissingProject),
        };
        let port = match set("PORT") {
            None => function.default_port(),
            Some(value) => value.parse().map_err(|_| ConfigError::Invalid {
                name: "PORT",
                value,
                reason: "expected a port number",
            })?,
        };
        let flag = |name: &'static str| match set(name).as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ConfigError::Invalid {
                name,
                value: other.to_owned(),
                reason: "expected true or false",
            }),
        };
        let fault_injection = flag("SAGA_FAULT_INJECTION")?;
        let chaos = flag("SAGA_CHAOS")?;
        if chaos && !local {
            return Err(ConfigError::Invalid {
                name: "SAGA_CHAOS",
                value: "true".into(),
                reason: "faults are injected on the emulators only",
            });
        }
        let bind = match set("SAGA_BIND") {
            None if local => IpAddr::from([127, 0, 0, 1]),
            None => IpAddr::from([0, 0, 0, 0]),
            Some(value) => value.parse().map_err(|_| ConfigError::Invalid {
                name: "SAGA_BIND",
                value,
                reason: "expected an IP address",
            })?,
        };
        let push_auth = match (
            set("SAGA_PUSH_AUTH").as_deref(),
            set("SAGA_PUSH_AUDIENCE"),
            set("SAGA_PUSH_SERVICE_ACCOUNT"),
        ) {
            (Some("disabled"), _, _) => PushAuth::Disabled,
            (Some(other), _, _) => {
                return Err(ConfigError::Invalid {
                    name: "SAGA_PUSH_AUTH",
                    value: other.to_owned(),
                    reason: "the only value is disabled",
                });
            }
            (None, Some(audience), Some(service_account)) => PushAuth::Oidc(OidcSettings {
                audience,
                service_account,
                jwks_url: set("SAGA_PUSH_JWKS_URL").unwrap_or_else(|| GOOGLE_JWKS_URL.into()),
                iam_fronted: flag("SAGA_PUSH_IAM_FRONTED")?,
            }),
            (None, Some(_), None) => {
                return Err(ConfigError::PushAuthIncomplete(
                    "SAGA_PUSH_AUDIENCE",
                    "SAGA_PUSH_SERVICE_ACCOUNT",
                ));
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::PushAuthIncomplete(
                    "SAGA_PUSH_SERVICE_ACCOUNT",
                    "SAGA_PUSH_AUDIENCE",
                ));
            }
            (None, None, None) if local => PushAuth::Disabled,
            (None, None, None) => return Err(ConfigError::PushAuthRequired),
        };
        let secs = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            match set(name) {
                None => Ok(None),
                Some(value) => match value.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(Duration::from_secs(n))),
                    _ => Err(ConfigError::Invalid {
                        name,
                        value,
                        reason: "expected a whole number of seconds above 0",
                    }),
                },
            }
        };
        let user_auth = match set("SAGA_USER_AUTH").as_deref() {
            None | Some("off") => UserAuth::Off,
            Some("firebase") => UserAuth::Firebase(FirebaseAuth {
                project_id: set("SAGA_USER_AUTH_PROJECT").unwrap_or_else(|| project_id.clone()),
                jwks_url: set("SAGA_USER_AUTH_JWKS_URL")
                    .unwrap_or_else(|| FIREBASE_JWKS_URL.into()),
                emulator: set("FIREBASE_AUTH_EMULATOR_HOST"),
                web_api_key: set("SAGA_WEB_API_KEY"),
            }),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "SAGA_USER_AUTH",
                    value: other.to_owned(),
                    reason: "expected firebase or off",
                });
            }
        };
        let number = |name: &'static str| -> Result<Option<f64>, ConfigError> {
            match set(name) {
                None => Ok(None),
                Some(value) => match value.parse::<f64>() {
                    Ok(n) if n > 0.0 && n.is_finite() => Ok(Some(n)),
                    _ => Err(ConfigError::Invalid {
                        name,
                        value,
                        reason: "expected a number above 0",
                    }),
                },
            }
        };
        let version = |name: &'static str| -> Result<Option<u32>, ConfigError> {
            match set(name) {
                None => Ok(None),
                Some(value) => match value.parse::<u32>() {
                    Ok(v) if (wire::OLDEST..=wire::CURRENT).contains(&v) => Ok(Some(v)),
                    _ => Err(ConfigError::Invalid {
                        name,
                        value,
                        reason: "expected an event schema version this build knows",
                    }),
                },
            }
        };
        let mut event_versions =
            version("SAGA_EVENT_VERSION")?.map_or_else(EventVersions::default, EventVersions::only);
        if let Some(emit) = version("SAGA_EMIT_EVENT_VERSION")? {
            event_versions.emit = emit.min(event_versions.accept);
        }
        let order_layout = match set("SAGA_ORDER_LAYOUT") {
            None => Layout::default(),
            Some(value) => value.parse().map_err(|_| ConfigError::Invalid {
                name: "SAGA_ORDER_LAYOUT",
                value,
                reason: "expected listed or packed",
            })?,
        };
        let otlp = otlp(&set)?;
        let defaults = Limits::default();
        let limits = Limits {
            post_every: number("SAGA_POST_RATE")?.map_or(defaults.post_every, |rate| {
                Duration::from_secs_f64(1.0 / rate)
            }),
            post_burst: number("SAGA_POST_BURST")?
                .map_or(defaults.post_burst, |n| n.min(f64::from(u32::MAX)) as u32),
            streams_max: number("SAGA_STREAMS_MAX")?.map_or(defaults.streams_max, |n| n as usize),
            stream_max: secs("SAGA_STREAM_MAX_SECS")?.unwrap_or(defaults.stream_max),
            request_timeout: secs("SAGA_REQUEST_TIMEOUT_SECS")?.unwrap_or(defaults.request_timeout),
            trust_forwarded: flag("SAGA_TRUST_FORWARDED")?,
        };
        Ok(Config {
            project_id,
            pubsub,
            firestore,
            fault_injection,
            bind,
            port,
            push_auth,
            saga_timeout: secs("SAGA_TIMEOUT_SECS")?.unwrap_or(DEFAULT_SAGA_TIMEOUT),
            outbox_grace: secs("SAGA_OUTBOX_GRACE_SECS")?.unwrap_or(DEFAULT_OUTBOX_GRACE),
            sweep_interval: secs("SAGA_SWEEP_INTERVAL_SECS")?,
            user_auth,
            limits,
            faults: Faults {
                chaos,
                ..Faults::default()
            },
            event_versions,
            order_layout,
            otlp,
        })
    }
}

/// The OTLP exporter's settings, by the OpenTelemetry SDKs' variables: none without an
/// endpoint; only `http/protobuf` (gRPC would add a second HTTP/2 stack for no gain here,
/// and JSON is larger).
fn otlp(set: &impl Fn(&str) -> Option<String>) -> Result<Option<Otlp>, ConfigError> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = set(name)
            && protocol.trim() != OTLP_PROTOCOL
        {
            return Err(ConfigError::Invalid {
                name,
                value: protocol,
                reason: "only http/protobuf is supported",
            });
        }
    }
    let (name, traces_url) = match (
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        set("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim().to_owned()),
        (None, Some(base)) => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            Otlp::at(base.trim()).traces_url,
        ),
        (None, None) => return Ok(None),
    };
    let invalid = |reason| ConfigError::Invalid {
        name,
        value: traces_url.clone(),
        reason,
    };
    let url = reqwest::Url::parse(&traces_url).map_err(|_| invalid("expected a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("expected an http:// or https:// URL"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| invalid("expected a URL with a host"))?;
    let google_auth = url.scheme() == "https" && host.ends_with(".googleapis.com");
    Ok(Some(Otlp {
        traces_url,
        google_auth,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(Function::Inventory, |k| vars.get(k).cloned())
    }

    /// The cloud's settings and `extra`.
    fn in_the_cloud(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut vars = CLOUD.to_vec();
        vars.extend_from_slice(extra);
        config(&vars)
    }

    #[test]
    fn on_the_emulators_everything_has_a_local_default() {
        let c = config(&[
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
            ("FIRESTORE_EMULATOR_HOST", "127.0.0.1:8086"),
        ])
        .unwrap();
        assert_eq!(c.project_id, "saga-local");
        assert_eq!(c.port, 8082);
        assert_eq!(c.bind, IpAddr::from([127, 0, 0, 1]));
        assert!(!c.fault_injection);
        assert_eq!(c.pubsub, Endpoint::Emulator("127.0.0.1:8085".into()));
    }

    const EMULATORS: &[(&str, &str)] = &[
        ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
        ("FIRESTORE_EMULATOR_HOST", "127.0.0.1:8086"),
    ];
    const CLOUD: [(&str, &str); 3] = [
        ("GOOGLE_CLOUD_PROJECT", "shop"),
        (
            "SAGA_PUSH_AUDIENCE",
            "https://saga-order-1.europe-west1.run.app",
        ),
        (
            "SAGA_PUSH_SERVICE_ACCOUNT",
            "saga-push@shop.iam.gserviceaccount.com",
        ),
    ];

    #[test]
    fn in_the_cloud_push_auth_is_on_unless_explicitly_disabled() {
        let c = config(&CLOUD).unwrap();
        let PushAuth::Oidc(oidc) = c.push_auth else {
            panic!("push auth off in the cloud");
        };
        assert_eq!(oidc.jwks_url, GOOGLE_JWKS_URL);
        assert!(
            !oidc.iam_fronted,
            "a removed signature is refused unless declared"
        );
        let mut fronted = CLOUD.to_vec();
        fronted.push(("SAGA_PUSH_IAM_FRONTED", "true"));
        let PushAuth::Oidc(oidc) = config(&fronted).unwrap().push_auth else {
            panic!("push auth off");
        };
        assert!(oidc.iam_fronted);
        assert_eq!(
            config(&[("GOOGLE_CLOUD_PROJECT", "shop")]),
            Err(ConfigError::PushAuthRequired)
        );
        assert!(matches!(
            config(&CLOUD[..2]),
            Err(ConfigError::PushAuthIncomplete(..))
        ));
        let off = config(&[
            ("GOOGLE_CLOUD_PROJECT", "shop"),
            ("SAGA_PUSH_AUTH", "disabled"),
        ]);
        assert_eq!(off.unwrap().push_auth, PushAuth::Disabled);
        let bad = config(&[
            ("GOOGLE_CLOUD_PROJECT", "shop"),
            ("SAGA_PUSH_AUTH", "maybe"),
        ]);
        assert!(bad.unwrap_err().to_string().contains("SAGA_PUSH_AUTH"));
    }

    #[test]
    fn in_the_cloud_the_project_is_required_and_port_comes_from_cloud_run() {
        assert_eq!(config(&[]), Err(ConfigError::MissingProject));
        let mut vars = CLOUD.to_vec();
        vars.push(("PORT", "9000"));
        let c = config(&vars).unwrap();
        assert_eq!(
            (c.port, c.pubsub, c.firestore),
            (9000, Endpoint::Cloud, Endpoint::Cloud)
        );
        assert_eq!(c.bind, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn user_auth_is_off_unless_asked_for_and_accepts_the_emulators_tokens_only_when_told() {
        assert_eq!(config(&CLOUD).unwrap().user_auth, UserAuth::Off);
        let mut vars = CLOUD.to_vec();
        vars.push(("SAGA_USER_AUTH", "firebase"));
        let UserAuth::Firebase(firebase) = config(&vars).unwrap().user_auth else {
            panic!("user auth off");
        };
        assert_eq!(
            (firebase.project_id.as_str(), firebase.jwks_url.as_str()),
            ("shop", FIREBASE_JWKS_URL)
        );
        assert_eq!(firebase.emulator, None);
        vars.push(("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099"));
        let UserAuth::Firebase(firebase) = config(&vars).unwrap().user_auth else {
            panic!("user auth off");
        };
        assert_eq!(firebase.emulator.as_deref(), Some("127.0.0.1:9099"));
        vars.push(("SAGA_POST_RATE", "0.5"));
        vars.push(("SAGA_STREAMS_MAX", "3"));
        let limits = config(&vars).unwrap().limits;
        assert_eq!(
            (limits.post_every, limits.streams_max),
            (Duration::from_secs(2), 3)
        );
        let mut bad = CLOUD.to_vec();
        bad.push(("SAGA_POST_RATE", "-1"));
        assert!(
            config(&bad)
                .unwrap_err()
                .to_string()
                .contains("SAGA_POST_RATE")
        );
    }

    #[test]
    fn bad_values_are_named() {
        let with = |extra: (&'static str, &'static str)| {
            let mut vars = CLOUD.to_vec();
            vars.push(extra);
            config(&vars)
        };
        let e = with(("PORT", "eighty")).unwrap_err();
        assert!(e.to_string().contains("PORT"));
        let e = with(("SAGA_FAULT_INJECTION", "maybe")).unwrap_err();
        assert!(e.to_string().contains("SAGA_FAULT_INJECTION"));
        assert!(
            with(("SAGA_FAULT_INJECTION", "true"))
                .unwrap()
                .fault_injection
        );
    }

    #[test]
    fn chaos_faults_are_honoured_on_the_emulators_only() {
        let on = [("SAGA_CHAOS", "true")];
        let mut cloud = CLOUD.to_vec();
        cloud.extend_from_slice(&on);
        let e = config(&cloud).unwrap_err();
        assert!(e.to_string().contains("SAGA_CHAOS"), "{e}");
        let mut local = EMULATORS.to_vec();
        local.extend_from_slice(&on);
        assert!(config(&local).unwrap().faults.chaos);
        assert!(!config(EMULATORS).unwrap().faults.chaos);
    }

    #[test]
    fn spans_are_exported_only_to_a_configured_otlp_endpoint_over_http_protobuf() {
        assert_eq!(in_the_cloud(&[]).unwrap().otlp, None);
        assert_eq!(
            in_the_cloud(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
                .unwrap()
                .otlp,
            None,
            "a protocol alone exports nothing"
        );
        let local = in_the_cloud(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]);
        assert_eq!(
            local.unwrap().otlp,
            Some(Otlp {
                traces_url: "http://127.0.0.1:4318/v1/traces".into(),
                google_auth: false
            })
        );
        let google = in_the_cloud(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://telemetry.googleapis.com",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(
            google.unwrap().otlp,
            Some(Otlp {
                traces_url: "https://telemetry.googleapis.com/v1/traces".into(),
                google_auth: true
            })
        );
        let full = in_the_cloud(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4318/custom",
            ),
        ]);
        assert_eq!(
            full.unwrap().otlp.map(|o| o.traces_url),
            Some("http://collector:4318/custom".into())
        );
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ] {
            let e = in_the_cloud(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                (name, value),
            ])
            .unwrap_err();
            assert!(
                e.to_string().contains(name) && e.to_string().contains("http/protobuf"),
                "{e}"
            );
        }
        for bad in ["127.0.0.1:4318", "ftp://collector", "not a url"] {
            let e = in_the_cloud(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]).unwrap_err();
            assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        }
    }

    #[test]
    fn event_versions_speak_the_current_one_unless_told() {
        assert_eq!(
            in_the_cloud(&[]).unwrap().event_versions,
            EventVersions::default()
        );
        assert_eq!(
            in_the_cloud(&[("SAGA_EVENT_VERSION", "1")])
                .unwrap()
                .event_versions,
            EventVersions { emit: 1, accept: 1 }
        );
        assert_eq!(
            in_the_cloud(&[("SAGA_EMIT_EVENT_VERSION", "1")])
                .unwrap()
                .event_versions,
            EventVersions {
                emit: 1,
                accept: wire::CURRENT
            }
        );
        for bad in ["0", "99", "two"] {
            let e = in_the_cloud(&[("SAGA_EVENT_VERSION", bad)]).unwrap_err();
            assert!(e.to_string().contains("SAGA_EVENT_VERSION"), "{e}");
        }
    }

    #[test]
    fn orders_are_written_packed_unless_pinned_to_the_listed_layout() {
        assert_eq!(in_the_cloud(&[]).unwrap().order_layout, Layout::Packed);
        assert_eq!(
            in_the_cloud(&[("SAGA_ORDER_LAYOUT", "listed")])
                .unwrap()
                .order_layout,
            Layout::Listed
        );
        let e = in_the_cloud(&[("SAGA_ORDER_LAYOUT", "maps")]).unwrap_err();
        assert!(e.to_string().contains("SAGA_ORDER_LAYOUT"), "{e}");
    }
}
