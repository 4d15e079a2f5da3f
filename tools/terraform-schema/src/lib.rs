//! Checks the project's Terraform against the google provider's schema without the provider.
//!
//! `terraform validate` needs the hashicorp/google provider binary, and it cannot be
//! downloaded here (this machine reaches package registries only, npm among them). The
//! provider's schema also ships as generated TypeScript declarations in the cdktf npm
//! packages, pinned in [`fetch`]: `@cdktf/provider-google@16.12.1` (hashicorp/google 6.50.0)
//! and `@cdktf/provider-google-beta@16.12.1` (hashicorp/google-beta 6.50.0). [`dts`] reads a
//! resource's schema from its `index.d.ts`, and [`check`] walks every `.tf` file of a
//! directory tree (one module per directory) and reports, with file and resource address:
//!
//! - a resource or data source type the provider does not have (`provider = google-beta`
//!   selects the beta schema);
//! - in `resource` and `data` blocks and their nested blocks (`dynamic "x" { content {...} }`
//!   included): an unknown argument or block, a missing required argument or block, an
//!   argument written as a block or a block as an argument, a block repeated where at most
//!   one is allowed. Meta-arguments (`count`, `for_each`, `depends_on`, `provider`) and
//!   `lifecycle` are allowed and not checked further;
//! - in every expression of every block (arguments, nested blocks, locals, outputs, module
//!   arguments): a reference `google_x.name[...].attr` or `data.google_x.name[...].attr`
//!   whose first attribute the type does not export, or to a resource the same module does
//!   not declare.
//!
//! Not checked: argument types and values, attribute paths past their first step, the
//! contents of `lifecycle`/`provisioner`/`connection`, other providers' resources, and
//! `moved`/`removed` blocks (they name resources no longer declared).

pub mod check;
pub mod dts;
pub mod fetch;

use std::path::{Path, PathBuf};

pub use check::{Finding, FindingKind, check_dir};

/// What can keep the check from running (as opposed to a [`Finding`] in the Terraform).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("npm is not on PATH: it is needed once to fetch the provider schema packages")]
    NpmMissing,
    #[error("npm pack {spec} failed: {stderr}")]
    Npm { spec: String, stderr: String },
    #[error("{} does not have the pinned integrity {expected} (got {actual}); removed it", tarball.display())]
    Integrity {
        tarball: PathBuf,
        expected: &'static str,
        actual: String,
    },
    #[error("tar could not extract {} (GNU tar with --wildcards is needed): {stderr}", tarball.display())]
    Tar { tarball: PathBuf, stderr: String },
    #[error("cannot {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid HCL", file.display())]
    Hcl {
        file: PathBuf,
        #[source]
        source: hcl::Error,
    },
    #[error("template {template:?} does not parse")]
    Template {
        template: String,
        #[source]
        source: hcl::Error,
    },
    #[error("{} does not have the shape cdktf generates", file.display())]
    Dts {
        file: PathBuf,
        #[source]
        source: dts::DtsError,
    },
}

/// Wraps an I/O error with what was being done to which path.
pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> SchemaError {
    let context = format!("{action} {}", path.display());
    move |source| SchemaError::Io { context, source }
}
