//! Brings the pinned cdktf provider packages into `<target>/terraform-schema/`.
//!
//! The Terraform registry is not reachable here, npm is: `npm pack` fetches the tarball, its
//! sha512 is checked against the integrity the registry published for that version
//! (`npm view <pkg>@<version> dist.integrity`), and the system `tar` extracts only
//! `package/lib/*/index.d.ts` (about 40 MB of the 330 MB unpacked).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine;
use sha2::{Digest, Sha512};

use crate::{SchemaError, io_err};

/// A pinned npm package holding a provider's generated schema.
#[derive(Debug)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    /// The Terraform provider it was generated from.
    pub provider: &'static str,
    /// `dist.integrity` as the npm registry publishes it.
    pub integrity: &'static str,
    /// Set once this process has the package extracted.
    ready: OnceLock<PathBuf>,
}

/// hashicorp/google 6.50.0.
pub static GOOGLE: Package = Package {
    name: "@cdktf/provider-google",
    version: "16.12.1",
    provider: "hashicorp/google 6.50.0",
    integrity: "sha512-KqNA/5RiFT07r0PSZ6/07cJ2zESUgbj1JchVj21iBFBZVUbD+578xA/k8eq/r0cbyEgLmg9eYWeVslaYah4DCQ==",
    ready: OnceLock::new(),
};

/// hashicorp/google-beta 6.50.0 (for beta-only resources such as
/// `google_project_service_identity`).
pub static GOOGLE_BETA: Package = Package {
    name: "@cdktf/provider-google-beta",
    version: "16.12.1",
    provider: "hashicorp/google-beta 6.50.0",
    integrity: "sha512-ip0dXu0ZrsyMgcoGNfkJCYG8PFjNtfb2wkz4Sw7IU09rQMK/A6++SwkmFHl8wJ8KlwMvd2w4tNXfErIbWWWqag==",
    ready: OnceLock::new(),
};

impl Package {
    /// `cdktf-provider-google-16.12.1`: what `npm pack` names the tarball, less `.tgz`.
    fn stem(&self) -> String {
        let name = self.name.trim_start_matches('@').replace('/', "-");
        format!("{name}-{}", self.version)
    }
}

/// `<target>/terraform-schema`, where `<target>` is `CARGO_TARGET_DIR` if set, else the
/// workspace's `target/` (this crate lives at `<workspace>/tools/terraform-schema`).
pub fn cache_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or(Path::new("."));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("terraform-schema")
}

/// The package's `lib/` directory, fetching, verifying and extracting it on first use.
///
/// Safe under concurrent test threads and processes: the work is done under an exclusive
/// lock on `<stem>.lock` and published by renaming a finished directory into place.
pub fn lib_dir(pkg: &'static Package) -> Result<PathBuf, SchemaError> {
    if let Some(dir) = pkg.ready.get() {
        return Ok(dir.clone());
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(io_err("create", &cache))?;
    let stem = pkg.stem();
    let lock_path = cache.join(format!("{stem}.lock"));
    let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;

    let root = cache.join(&stem);
    let marker = root.join(".verified");
    if fs::read_to_string(&marker).ok().as_deref() != Some(pkg.integrity) {
        let tarball = cache.join(format!("{stem}.tgz"));
        if !tarball.exists() {
            npm_pack(pkg, &cache, &stem)?;
        }
        verify(pkg, &tarball)?;
        let tmp = cache.join(format!("{stem}.tmp"));
        extract(&tarball, &tmp)?;
        let tmp_marker = tmp.join(".verified");
        fs::write(&tmp_marker, pkg.integrity).map_err(io_err("write", &tmp_marker))?;
        if root.exists() {
            fs::remove_dir_all(&root).map_err(io_err("remove", &root))?;
        }
        fs::rename(&tmp, &root).map_err(io_err("rename into place", &root))?;
    }
    let lib = root.join("package").join("lib");
    let _ = pkg.ready.set(lib.clone());
    Ok(lib)
}

/// `npm pack <name>@<version>` into a scratch directory, then renamed into `cache`.
fn npm_pack(pkg: &Package, cache: &Path, stem: &str) -> Result<(), SchemaError> {
    let scratch = cache.join(format!("{stem}.npm"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(io_err("remove", &scratch))?;
    }
    fs::create_dir_all(&scratch).map_err(io_err("create", &scratch))?;
    let spec = format!("{}@{}", pkg.name, pkg.version);
    let output = Command::new("npm")
        .args(["pack", &spec, "--silent", "--pack-destination"])
        .arg(&scratch)
        .current_dir(&scratch)
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SchemaError::NpmMissing,
            _ => SchemaError::Io {
                context: format!("run npm pack {spec}"),
                source: e,
            },
        })?;
    if !output.status.success() {
        return Err(SchemaError::Npm {
            spec,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let packed = scratch.join(format!("{stem}.tgz"));
    let tarball = cache.join(format!("{stem}.tgz"));
    fs::rename(&packed, &tarball).map_err(io_err("rename npm pack's tarball", &packed))?;
    fs::remove_dir_all(&scratch).map_err(io_err("remove", &scratch))
}

/// Checks the tarball's sha512 against the pinned integrity; removes it if it differs.
fn verify(pkg: &Package, tarball: &Path) -> Result<(), SchemaError> {
    let mut file = File::open(tarball).map_err(io_err("open", tarball))?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", tarball))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
    );
    if actual != pkg.integrity {
        fs::remove_file(tarball).map_err(io_err("remove", tarball))?;
        return Err(SchemaError::Integrity {
            tarball: tarball.to_owned(),
            expected: pkg.integrity,
            actual,
        });
    }
    Ok(())
}

/// `tar -xzf <tarball> -C <dir> --wildcards 'package/lib/*/index.d.ts'` into a fresh `dir`.
/// `--wildcards` is GNU tar's (Debian's `tar`).
fn extract(tarball: &Path, dir: &Path) -> Result<(), SchemaError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err("remove", dir))?;
    }
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let output = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(dir)
        .args(["--no-same-owner", "--wildcards", "package/lib/*/index.d.ts"])
        .output()
        .map_err(io_err("run tar on", tarball))?;
    if !output.status.success() {
        return Err(SchemaError::Tar {
            tarball: tarball.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
