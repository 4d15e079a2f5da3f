//! Walks the `.tf` files of a directory tree, one module per directory, and checks their
//! `resource` and `data` blocks and their references against the provider schema.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use hcl::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Block, Body};

use crate::dts::{self, BlockSchema, ResourceSchema};
use crate::fetch::{self, GOOGLE, GOOGLE_BETA, Package};
use crate::{SchemaError, io_err};

/// Terraform's meta-arguments, allowed in every `resource` and `data` block.
const META_ARGUMENTS: [&str; 4] = ["count", "for_each", "depends_on", "provider"];

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    UnknownArgument,
    UnknownBlock,
    MissingArgument,
    MissingBlock,
    /// An argument written `x { ... }`.
    AttributeAsBlock,
    /// A block written `x = ...`.
    BlockAsAttribute,
    /// A block that may appear once, written more than once.
    RepeatedBlock,
    /// `google_x.name.attr` where `google_x` has no attribute `attr`.
    UnknownAttribute,
    /// `google_x.name` where this module declares no `google_x.name`.
    UndeclaredResource,
    UnknownResourceType,
}

/// One error in the Terraform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The `.tf` file, relative to the checked directory.
    pub file: PathBuf,
    /// The top-level block: `google_x.name`, `data.google_x.name`, `output.url`, `locals`.
    pub address: String,
    pub kind: FindingKind,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.address,
            self.message
        )
    }
}

/// Checks every `.tf` file under `dir` (each directory is a module; hidden directories such
/// as `.terraform` are skipped). Fetches the provider packages on first use.
pub fn check_dir(dir: &Path) -> Result<Vec<Finding>, SchemaError> {
    let mut modules: BTreeMap<PathBuf, Vec<(PathBuf, Body)>> = BTreeMap::new();
    for file in tf_files(dir)? {
        let text = fs::read_to_string(&file).map_err(io_err("read", &file))?;
        let body = hcl::parse(&text).map_err(|source| SchemaError::Hcl {
            file: file.clone(),
            source,
        })?;
        let module = file.parent().unwrap_or(dir).to_owned();
        let rel = file.strip_prefix(dir).unwrap_or(&file).to_owned();
        modules.entry(module).or_default().push((rel, body));
    }
    let mut checker = Checker::default();
    for files in modules.values() {
        checker.check_module(files)?;
    }
    Ok(checker.findings)
}

/// The `.tf` files under `dir`, sorted.
fn tf_files(dir: &Path) -> Result<Vec<PathBuf>, SchemaError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let path = entry.map_err(io_err("list", dir))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_dir() && !hidden {
            files.extend(tf_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "tf") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A reference to a resource or data source, as written.
struct Reference {
    data: bool,
    type_name: String,
    name: String,
    /// The first attribute after the name, if any.
    attr: Option<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.data { "data." } else { "" };
        write!(f, "{prefix}{}.{}", self.type_name, self.name)?;
        match &self.attr {
            Some(attr) => write!(f, ".{attr}"),
            None => Ok(()),
        }
    }
}

/// Parsed schemas by (beta, data source, type); `None` for a type the provider lacks.
type SchemaCache = HashMap<(bool, bool, String), Option<Rc<ResourceSchema>>>;

#[derive(Default)]
struct Checker {
    schemas: SchemaCache,
    findings: Vec<Finding>,
    /// The file and top-level block being checked, for the findings.
    file: PathBuf,
    address: String,
}

impl Checker {
    fn report(&mut self, kind: FindingKind, message: String) {
        self.findings.push(Finding {
            file: self.file.clone(),
            address: self.address.clone(),
            kind,
            message,
        });
    }

    /// The schema of a resource type, parsed on first use from `lib/<kebab>/index.d.ts`.
    fn schema(
        &mut self,
        beta: bool,
        data: bool,
        type_name: &str,
    ) -> Result<Option<Rc<ResourceSchema>>, SchemaError> {
        let key = (beta, data, type_name.to_owned());
        if let Some(cached) = self.schemas.get(&key) {
            return Ok(cached.clone());
        }
        let pkg: &'static Package = if beta { &GOOGLE_BETA } else { &GOOGLE };
        let lib = fetch::lib_dir(pkg)?;
        let kebab = type_name.replace('_', "-");
        // cdktf drops the provider's prefix from resource directories
        // (`google_cloud_run_v2_service` -> `cloud-run-v2-service`) but not google-beta's
        // (`google-project-service-identity`); data sources are `data-google-project` in both.
        let candidates = if data {
            vec![format!("data-{kebab}")]
        } else {
            let short = kebab.strip_prefix("google-").unwrap_or(&kebab).to_owned();
            vec![short, kebab]
        };
        let mut found = None;
        for dir in candidates {
            let file = lib.join(dir).join("index.d.ts");
            let Ok(text) = fs::read_to_string(&file) else {
                continue;
            };
            let schema = match dts::parse(&text) {
                // `lib/provider` holds the provider, not a resource.
                Err(dts::DtsError::NoResourceClass) => continue,
                parsed => parsed.map_err(|source| SchemaError::Dts { file, source })?,
            };
            if schema.type_name == type_name && schema.data_source == data {
                found = Some(Rc::new(schema));
                break;
            }
        }
        self.schemas.insert(key, found.clone());
        Ok(found)
    }

    fn check_module(&mut self, files: &[(PathBuf, Body)]) -> Result<(), SchemaError> {
        // Each declared resource, and whether it is on google-beta.
        let mut declared = HashMap::new();
        for (_, body) in files {
            for block in body.blocks() {
                if let Some((data, type_name, name)) = resource_labels(block) {
                    let key = (data, type_name.to_owned(), name.to_owned());
                    declared.insert(key, on_beta(&block.body));
                }
            }
        }
        for (file, body) in files {
            for block in body.blocks() {
                self.file.clone_from(file);
                self.address = match resource_labels(block) {
                    Some((true, t, n)) => format!("data.{t}.{n}"),
                    Some((false, t, n)) => format!("{t}.{n}"),
                    None => std::iter::once(block.identifier.as_str())
                        .chain(block.labels.iter().map(|l| l.as_str()))
                        .collect::<Vec<_>>()
                        .join("."),
                };
                if let Some((data, type_name, _)) = resource_labels(block) {
                    self.check_resource(data, type_name, &block.body)?;
                }
                // `moved` and `removed` name resources that are no longer declared.
                if !matches!(block.identifier.as_str(), "moved" | "removed") {
                    let mut refs = Vec::new();
                    body_refs(&block.body, &mut refs)?;
                    for r in refs {
                        self.check_reference(&declared, &r)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_resource(
        &mut self,
        data: bool,
        type_name: &str,
        body: &Body,
    ) -> Result<(), SchemaError> {
        // Only the google providers' types: their schema is the one we have.
        if !type_name.starts_with("google_") {
            return Ok(());
        }
        let beta = on_beta(body);
        let Some(schema) = self.schema(beta, data, type_name)? else {
            let pkg = if beta { &GOOGLE_BETA } else { &GOOGLE };
            let kind = if data { "data source" } else { "resource type" };
            let mut message = format!("{kind} `{type_name}` is not in {}", pkg.provider);
            if !beta && self.schema(true, data, type_name)?.is_some() {
                message.push_str(" (it is in google-beta: set `provider = google-beta`)");
            }
            self.report(FindingKind::UnknownResourceType, message);
            return Ok(());
        };
        self.check_body(body, &schema.body, None);
        Ok(())
    }

    /// Checks a block body against its schema. `path` is the nested block path, `None` for
    /// the resource's own body (where meta-arguments and `lifecycle` are allowed).
    fn check_body(&mut self, body: &Body, schema: &BlockSchema, path: Option<&str>) {
        let top = path.is_none();
        let place = path.map(|p| format!(" in `{p}`")).unwrap_or_default();
        let mut present: HashMap<&str, usize> = HashMap::new();
        let mut dynamic: HashSet<&str> = HashSet::new();

        for attr in body.attributes() {
            let key = attr.key.as_str();
            if top && META_ARGUMENTS.contains(&key) {
                continue;
            }
            *present.entry(key).or_default() += 1;
            if schema.blocks.contains_key(key) {
                let message = format!(
                    "`{key}`{place} is a block: write `{key} {{ ... }}`, not `{key} = ...`"
                );
                self.report(FindingKind::BlockAsAttribute, message);
            } else if !schema.attributes.contains_key(key) {
                let message = format!("unsupported argument `{key}`{place}");
                self.report(FindingKind::UnknownArgument, message);
            }
        }

        for block in body.blocks() {
            let mut key = block.identifier.as_str();
            let mut inner = Some(&block.body);
            // Terraform's meta-blocks; provisioners are not checked (this project has none).
            if top && matches!(key, "lifecycle" | "provisioner" | "connection") {
                continue;
            }
            if key == "dynamic" {
                // `dynamic "x" { for_each = ... content { ... } }` stands for blocks `x`.
                let Some(label) = block.labels.first() else {
                    continue;
                };
                key = label.as_str();
                inner = block
                    .body
                    .blocks()
                    .find(|b| b.identifier.as_str() == "content")
                    .map(|b| &b.body);
                dynamic.insert(key);
            } else {
                *present.entry(key).or_default() += 1;
            }
            let nested_path = path.map_or_else(|| key.to_owned(), |p| format!("{p}.{key}"));
            match schema.blocks.get(key) {
                Some(nested) => {
                    if let Some(inner) = inner {
                        self.check_body(inner, &nested.schema, Some(&nested_path));
                    }
                }
                None if schema.attributes.contains_key(key) => {
                    let message =
                        format!("`{key}`{place} is an argument: write `{key} = ...`, not a block");
                    self.report(FindingKind::AttributeAsBlock, message);
                }
                None => {
                    let message = format!("unsupported block `{key}`{place}");
                    self.report(FindingKind::UnknownBlock, message);
                }
            }
        }

        for (name, attr) in &schema.attributes {
            if attr.required && !present.contains_key(name.as_str()) {
                let message = format!("missing required argument `{name}`{place}");
                self.report(FindingKind::MissingArgument, message);
            }
        }
        for (name, nested) in &schema.blocks {
            let count = present.get(name.as_str()).copied().unwrap_or(0);
            if nested.required && count == 0 && !dynamic.contains(name.as_str()) {
                let message = format!("missing required block `{name}`{place}");
                self.report(FindingKind::MissingBlock, message);
            }
            if nested.single && count > 1 {
                let message =
                    format!("block `{name}`{place} may appear at most once, found {count}");
                self.report(FindingKind::RepeatedBlock, message);
            }
        }
    }

    fn check_reference(
        &mut self,
        declared: &HashMap<(bool, String, String), bool>,
        r: &Reference,
    ) -> Result<(), SchemaError> {
        let key = (r.data, r.type_name.clone(), r.name.clone());
        let Some(&beta) = declared.get(&key) else {
            let prefix = if r.data { "data." } else { "" };
            let message = format!(
                "reference `{r}` to `{prefix}{}.{}`, which this module does not declare",
                r.type_name, r.name
            );
            self.report(FindingKind::UndeclaredResource, message);
            return Ok(());
        };
        let Some(attr) = &r.attr else {
            return Ok(());
        };
        // Checked against the schema the declaration selects (google or google-beta); a type
        // that provider lacks was reported where it is declared.
        if let Some(schema) = self.schema(beta, r.data, &r.type_name)?
            && !schema.exports(attr)
        {
            let message = format!(
                "reference `{r}`: `{}` has no attribute `{attr}`",
                r.type_name
            );
            self.report(FindingKind::UnknownAttribute, message);
        }
        Ok(())
    }
}

/// Whether a resource body selects google-beta: `provider = google-beta[.alias]`.
fn on_beta(body: &Body) -> bool {
    body.attributes()
        .find(|a| a.key.as_str() == "provider")
        .and_then(|a| root_variable(&a.expr))
        .is_some_and(|root| root == "google-beta")
}

/// `resource "t" "n"` / `data "t" "n"` as (is data, t, n).
fn resource_labels(block: &Block) -> Option<(bool, &str, &str)> {
    let data = match block.identifier.as_str() {
        "resource" => false,
        "data" => true,
        _ => return None,
    };
    match block.labels.as_slice() {
        [t, n] => Some((data, t.as_str(), n.as_str())),
        _ => None,
    }
}

/// The variable an expression starts with: `google-beta` in `google-beta` or `google-beta.x`.
fn root_variable(expr: &Expression) -> Option<&str> {
    match expr {
        Expression::Variable(v) => Some(v.as_str()),
        Expression::Traversal(t) => root_variable(&t.expr),
        _ => None,
    }
}

/// Every resource reference in a body, nested blocks included.
fn body_refs(body: &Body, out: &mut Vec<Reference>) -> Result<(), SchemaError> {
    for attr in body.attributes() {
        expr_refs(&attr.expr, out)?;
    }
    for block in body.blocks() {
        body_refs(&block.body, out)?;
    }
    Ok(())
}

/// Every resource reference in an expression, walked recursively.
fn expr_refs(expr: &Expression, out: &mut Vec<Reference>) -> Result<(), SchemaError> {
    use hcl::expr::Operation::{Binary, Unary};
    let children: Vec<&Expression> = match expr {
        Expression::Traversal(t) => {
            if let Expression::Variable(root) = &t.expr {
                out.extend(reference(root.as_str(), &t.operators));
            }
            let indexes = t.operators.iter().filter_map(|op| match op {
                TraversalOperator::Index(index) => Some(index),
                _ => None,
            });
            std::iter::once(&t.expr).chain(indexes).collect()
        }
        Expression::Array(items) => items.iter().collect(),
        Expression::Object(object) => object
            .iter()
            .flat_map(|(key, value)| match key {
                ObjectKey::Expression(key) => vec![key, value],
                _ => vec![value],
            })
            .collect(),
        Expression::FuncCall(call) => call.args.iter().collect(),
        Expression::Parenthesis(inner) => vec![inner],
        Expression::Conditional(c) => vec![&c.cond_expr, &c.true_expr, &c.false_expr],
        Expression::Operation(op) => match op.as_ref() {
            Unary(u) => vec![&u.expr],
            Binary(b) => vec![&b.lhs_expr, &b.rhs_expr],
        },
        Expression::ForExpr(f) => [Some(&f.collection_expr), f.key_expr.as_ref()]
            .into_iter()
            .chain([Some(&f.value_expr), f.cond_expr.as_ref()])
            .flatten()
            .collect(),
        Expression::TemplateExpr(template) => {
            let parsed = Template::from_expr(template).map_err(|source| SchemaError::Template {
                template: template.to_string(),
                source,
            })?;
            template_refs(&parsed, out)?;
            Vec::new()
        }
        // Literals and bare variables hold no reference (a bare `google_x` is not one).
        _ => Vec::new(),
    };
    children
        .into_iter()
        .try_for_each(|child| expr_refs(child, out))
}

fn template_refs(template: &Template, out: &mut Vec<Reference>) -> Result<(), SchemaError> {
    for element in template.elements() {
        match element {
            Element::Literal(_) => {}
            Element::Interpolation(i) => expr_refs(&i.expr, out)?,
            Element::Directive(d) => match d.as_ref() {
                Directive::If(d) => {
                    expr_refs(&d.cond_expr, out)?;
                    template_refs(&d.true_template, out)?;
                    if let Some(f) = &d.false_template {
                        template_refs(f, out)?;
                    }
                }
                Directive::For(d) => {
                    expr_refs(&d.collection_expr, out)?;
                    template_refs(&d.template, out)?;
                }
            },
        }
    }
    Ok(())
}

/// `google_x.name[...].attr` or `data.google_x.name[...].attr` as a [`Reference`]; other
/// roots (`var`, `local`, `module`, `each`, for-expression variables, other providers'
/// resources) are not checked.
fn reference(root: &str, ops: &[TraversalOperator]) -> Option<Reference> {
    let (data, type_name, rest) = match (root, ops) {
        ("data", [TraversalOperator::GetAttr(t), rest @ ..]) => (true, t.as_str(), rest),
        (root, rest) => (false, root, rest),
    };
    if !type_name.starts_with("google_") {
        return None;
    }
    let [TraversalOperator::GetAttr(name), rest @ ..] = rest else {
        return None;
    };
    // Only the first attribute after the name (and any index or splat) is checked.
    let attr = rest.iter().find_map(|op| match op {
        TraversalOperator::GetAttr(a) => Some(a.as_str().to_owned()),
        _ => None,
    });
    Some(Reference {
        data,
        type_name: type_name.to_owned(),
        name: name.as_str().to_owned(),
        attr,
    })
}
