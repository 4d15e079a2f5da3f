//! The Firebase Authentication emulator (npm `firebase-tools`), for sign-in locally: `saga up
//! --auth` and the tests start it. It issues unsigned ID tokens (`alg: none`) for a project;
//! the frontend accepts them only when told where the emulator is.
//!
//! `firebase-tools` is installed on first use with npm into `target/firebase-tools` (pinned),
//! as the Terraform check fetches its schema: a fresh clone needs only Node.js and npm.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The pinned `firebase-tools` release.
pub const FIREBASE_TOOLS: &str = "15.34.2";

/// The emulator's project: a `demo-` project, which Firebase's tools run fully offline.
pub fn project_for(saga_project: &str) -> String {
    if saga_project.starts_with("demo-") {
        saga_project.to_owned()
    } else {
        format!("demo-{saga_project}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthEmulatorError {
    #[error(
        "npm is not installed: the Firebase Authentication emulator comes from npm \
         (firebase-tools); install Node.js 20+ with npm"
    )]
    NpmMissing,
    #[error("installing firebase-tools@{FIREBASE_TOOLS} with npm failed: {0}")]
    Install(String),
    #[error("starting the Firebase Authentication emulator: {0}")]
    Spawn(std::io::Error),
    #[error(
        "the Firebase Authentication emulator did not answer on {host} within {waited:?}; see {log}"
    )]
    NotReady {
        host: String,
        waited: Duration,
        log: String,
    },
    #[error("the Firebase Authentication emulator refused {what}: {reason}")]
    Call { what: String, reason: String },
}

/// Where `firebase-tools` is installed: `target/firebase-tools` of the workspace.
fn install_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("target")
        });
    target.join("firebase-tools").join(FIREBASE_TOOLS)
}

/// The `firebase` command, installed first if it is not yet.
pub fn firebase_cli() -> Result<PathBuf, AuthEmulatorError> {
    let dir = install_dir();
    let cli = dir.join("node_modules/.bin/firebase");
    if cli.is_file() {
        return Ok(cli);
    }
    if Command::new("npm").arg("--version").output().is_err() {
        return Err(AuthEmulatorError::NpmMissing);
    }
    // One install at a time across processes (the tests and `saga up` may start at once):
    // the others wait for it, then find it installed. The lock is released on drop.
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| AuthEmulatorError::Install(e.to_string()))?;
    let lock = std::fs::File::create(dir.with_extension("lock"))
        .map_err(|e| AuthEmulatorError::Install(e.to_string()))?;
    lock.lock()
        .map_err(|e| AuthEmulatorError::Install(e.to_string()))?;
    if cli.is_file() {
        return Ok(cli);
    }
    // Installed beside, then renamed into place: an install killed half-way leaves nothing
    // that looks installed.
    let staging = dir.with_extension(format!("installing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| AuthEmulatorError::Install(e.to_string()))?;
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&staging)
        .arg(format!("firebase-tools@{FIREBASE_TOOLS}"))
        .output()
        .map_err(|e| AuthEmulatorError::Install(e.to_string()))?;
    if !out.status.success() {
        return Err(AuthEmulatorError::Install(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    if std::fs::rename(&staging, &dir).is_err() {
        // The directory is there already; whether it holds the command is checked below.
        let _ = std::fs::remove_dir_all(&staging);
    }
    if cli.is_file() {
        Ok(cli)
    } else {
        Err(AuthEmulatorError::Install(format!("no {}", cli.display())))
    }
}

/// A running Firebase Authentication emulator; dropping it stops it.
#[derive(Debug)]
pub struct AuthEmulator {
    /// `127.0.0.1:PORT`, as `FIREBASE_AUTH_EMULATOR_HOST` takes it.
    pub host: String,
    /// The project whose tokens it issues (their audience).
    pub project: String,
    child: Child,
    http: reqwest::Client,
}

impl AuthEmulator {
    /// Starts the emulator on `host` (`127.0.0.1:PORT`) for `project` (a `demo-` project) and
    /// waits until it answers. Its hub and logging ports are picked free, so that several can
    /// run at once. It stops with the process that started it.
    pub async fn start(
        host: &str,
        project: &str,
        dir: &Path,
        log: &Path,
    ) -> Result<AuthEmulator, AuthEmulatorError> {
        let cli = tokio::task::spawn_blocking(firebase_cli)
            .await
            .map_err(|e| AuthEmulatorError::Install(e.to_string()))??;
        let port = host.rsplit(':').next().unwrap_or("9099");
        let free = || crate::free_port().map_err(AuthEmulatorError::Spawn);
        let config = json!({"emulators": {
            "auth": {"host": "127.0.0.1", "port": port.parse::<u16>().unwrap_or(9099)},
            "hub": {"host": "127.0.0.1", "port": free()?},
            "logging": {"host": "127.0.0.1", "port": free()?},
            "ui": {"enabled": false},
        }});
        std::fs::create_dir_all(dir).map_err(AuthEmulatorError::Spawn)?;
        std::fs::write(dir.join("firebase.json"), config.to_string())
            .map_err(AuthEmulatorError::Spawn)?;
        let out = std::fs::File::create(log).map_err(AuthEmulatorError::Spawn)?;
        let err = out.try_clone().map_err(AuthEmulatorError::Spawn)?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .arg("-c")
                .arg(crate::process::WATCHDOG)
                .arg("saga-emulator-watchdog")
                .arg(std::process::id().to_string())
                .arg(&cli)
                .args(["emulators:start", "--only", "auth", "--project", project])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(AuthEmulatorError::Spawn)?
        };
        let emulator = AuthEmulator {
            host: host.to_owned(),
            project: project.to_owned(),
            child,
            http: reqwest::Client::new(),
        };
        let limit = Duration::from_secs(90);
        let started = Instant::now();
        while !emulator.is_ready().await {
            if started.elapsed() > limit {
                return Err(AuthEmulatorError::NotReady {
                    host: host.to_owned(),
                    waited: limit,
                    log: log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(emulator)
    }

    async fn is_ready(&self) -> bool {
        let answer = self.http.get(format!("http://{}/", self.host)).send().await;
        match answer {
            Ok(r) => r
                .json::<Value>()
                .await
                .is_ok_and(|v| v["authEmulator"]["ready"] == true),
            Err(_) => false,
        }
    }

    async fn call(&self, what: &str, url: String, body: Value) -> Result<Value, AuthEmulatorError> {
        let error = |reason: String| AuthEmulatorError::Call {
            what: what.to_owned(),
            reason,
        };
        let response = self
            .http
            .post(url)
            .bearer_auth("owner")
            .json(&body)
            .send()
            .await
            .map_err(|e| error(e.to_string()))?;
        let status = response.status();
        let value: Value = response.json().await.map_err(|e| error(e.to_string()))?;
        if !status.is_success() {
            return Err(error(format!("{status}: {value}")));
        }
        Ok(value)
    }

    /// Creates (or finds) a user with this id, email and password.
    pub async fn user(
        &self,
        uid: &str,
        email: &str,
        password: &str,
    ) -> Result<(), AuthEmulatorError> {
        let url = format!(
            "http://{}/identitytoolkit.googleapis.com/v1/projects/{}/accounts",
            self.host, self.project
        );
        let created = self
            .call(
                "creating a user",
                url,
                json!({"localId": uid, "email": email, "password": password}),
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(AuthEmulatorError::Call { reason, .. })
                if reason.contains("DUPLICATE_LOCAL_ID") || reason.contains("EMAIL_EXISTS") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Signs a user in with email and password, as the page does; returns their ID token.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<String, AuthEmulatorError> {
        let url = format!(
            "http://{}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=emulator",
            self.host
        );
        let answer = self
            .call(
                "signing in",
                url,
                json!({"email": email, "password": password, "returnSecureToken": true}),
            )
            .await?;
        answer["idToken"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| AuthEmulatorError::Call {
                what: "signing in".into(),
                reason: "no idToken".into(),
            })
    }

    /// The process id of the watchdog the emulator runs under.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AuthEmulator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = crate::process::signal(self.child.id(), "TERM");
            let _ = self.child.wait();
        }
    }
}
