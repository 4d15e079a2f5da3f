//! Reads one resource's schema out of the `lib/<kebab-resource>/index.d.ts` that cdktf
//! generates from the provider schema.
//!
//! The files are generated, so their shape is regular (checked over every file of
//! `@cdktf/provider-google@16.12.1`: 25,106 fields, each with a registry doc link):
//! - `export interface <Class>Config extends cdktf.TerraformMetaArguments { ... }` holds the
//!   arguments, and `export interface <Class><Block> { ... }` each nested block;
//! - every field's doc comment ends in `Docs at Terraform Registry: {@link ...#snake_name
//!   Class#snake_name}` (the Terraform name), a block's comment has a line `* snake_name block`;
//! - a required field has no `?`; a block typed `X[] | cdktf.IResolvable` may repeat, one
//!   typed `X` may appear once;
//! - `export declare class <Class> extends cdktf.TerraformResource` (or `TerraformDataSource`)
//!   holds `static readonly tfResourceType = "google_x";` and a getter for every attribute the
//!   resource exports, computed ones included.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What is wrong with a d.ts file that does not have the generated shape.
#[derive(Debug, thiserror::Error)]
pub enum DtsError {
    #[error("no `export declare class ... extends cdktf.TerraformResource/TerraformDataSource`")]
    NoResourceClass,
    #[error("the resource class has no `static readonly tfResourceType`")]
    NoResourceType,
    #[error("no interface `{0}` (the type of a block)")]
    MissingInterface(String),
    #[error("field `{0}` has no `Docs at Terraform Registry` link naming it")]
    NoDocLink(String),
}

/// An argument of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub required: bool,
}

/// A block nested in another.
#[derive(Debug, Clone, PartialEq)]
pub struct NestedBlock {
    pub required: bool,
    /// At most one (`X`), rather than repeatable (`X[] | cdktf.IResolvable`).
    pub single: bool,
    pub schema: BlockSchema,
}

/// The arguments and blocks a block body may hold, by Terraform (snake_case) name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockSchema {
    pub attributes: BTreeMap<String, Attribute>,
    pub blocks: BTreeMap<String, NestedBlock>,
}

/// One resource or data source.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSchema {
    /// `google_cloud_run_v2_service`.
    pub type_name: String,
    pub data_source: bool,
    pub body: BlockSchema,
    /// The class's getters (camelCase), minus the `<x>Input` twins of getters `<x>`.
    pub getters: BTreeSet<String>,
}

impl ResourceSchema {
    /// Whether `resource.name.<attr>` is something the resource exports: an argument, a
    /// block, or a computed attribute (matched to its camelCase getter).
    pub fn exports(&self, attr: &str) -> bool {
        if self.body.attributes.contains_key(attr) || self.body.blocks.contains_key(attr) {
            return true;
        }
        let camel = camelize(attr);
        // cdktf renames names that clash with its own members: `build` -> `buildAttribute`,
        // `get_x` -> `fetchX`.
        let renamed = camel.strip_prefix("get").map(|rest| format!("fetch{rest}"));
        self.getters.contains(&camel)
            || self.getters.contains(&format!("{camel}Attribute"))
            || renamed.is_some_and(|r| self.getters.contains(&r))
    }
}

/// cdktf's camelCase of a Terraform name: upper-case after `_` and after a digit
/// (`detect_md5hash` -> `detectMd5Hash`, `enable_k8s_beta_apis` -> `enableK8SBetaApis`).
pub fn camelize(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = !out.is_empty();
            continue;
        }
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c.is_ascii_digit();
    }
    out
}

/// One `readonly` field of an interface.
struct Field {
    snake: String,
    required: bool,
    /// For a block: the interface it is typed with, and whether it is single.
    block: Option<(String, bool)>,
}

/// Parses one `index.d.ts`.
pub fn parse(text: &str) -> Result<ResourceSchema, DtsError> {
    let mut interfaces: HashMap<&str, Vec<Field>> = HashMap::new();
    let mut current: Option<(&str, Vec<Field>)> = None;
    let mut doc: Vec<&str> = Vec::new();
    let mut class: Option<(&str, bool)> = None;
    let mut in_class = false;
    let mut type_name = None;
    let mut getters = BTreeSet::new();

    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("export interface ") {
            current = Some((first_word(rest), Vec::new()));
            doc.clear();
        } else if let Some(rest) = line.strip_prefix("export declare class ") {
            let data = rest.contains(" extends cdktf.TerraformDataSource ");
            if data || rest.contains(" extends cdktf.TerraformResource ") {
                class = Some((first_word(rest), data));
                in_class = true;
            }
        } else if line.starts_with('}') {
            if let Some((name, fields)) = current.take() {
                interfaces.insert(name, fields);
            }
            in_class = false;
        } else if let Some((_, fields)) = current.as_mut() {
            let trimmed = line.trim();
            if trimmed.starts_with("/**") {
                doc.clear();
            }
            match trimmed.strip_prefix("readonly ") {
                Some(decl) => {
                    fields.push(field(decl, &doc)?);
                    doc.clear();
                }
                None => doc.push(trimmed),
            }
        } else if in_class {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("static readonly tfResourceType = \"") {
                type_name = rest.split('"').next().map(str::to_owned);
            } else if let Some(rest) = line.strip_prefix("    get ") {
                getters.insert(first_word(rest).to_owned());
            }
        }
    }

    let (class, data_source) = class.ok_or(DtsError::NoResourceClass)?;
    let type_name = type_name.ok_or(DtsError::NoResourceType)?;
    let inputs: Vec<String> = getters
        .iter()
        .filter(|g| {
            g.strip_suffix("Input")
                .is_some_and(|base| getters.contains(base))
        })
        .cloned()
        .collect();
    for input in inputs {
        getters.remove(&input);
    }
    let body = block_schema(&interfaces, &format!("{class}Config"))?;
    Ok(ResourceSchema {
        type_name,
        data_source,
        body,
        getters,
    })
}

/// The identifier at the start of `rest` (up to a space, `(`, `<` or `{`).
fn first_word(rest: &str) -> &str {
    rest.split([' ', '(', '<', '{']).next().unwrap_or(rest)
}

/// `clientVersion?: string;` with its doc comment lines.
fn field(decl: &str, doc: &[&str]) -> Result<Field, DtsError> {
    let (name, ty) = decl.split_once(": ").unwrap_or((decl, ""));
    let (name, required) = match name.strip_suffix('?') {
        Some(name) => (name, false),
        None => (name, true),
    };
    let snake = doc
        .iter()
        .find(|l| l.contains("Docs at Terraform Registry:"))
        .and_then(|l| l.rsplit('#').next())
        .map(|s| s.trim_end_matches('}').to_owned())
        .ok_or_else(|| DtsError::NoDocLink(name.to_owned()))?;
    let block_line = format!("* {snake} block");
    let block = doc.contains(&block_line.as_str()).then(|| {
        let ty = ty.trim_end_matches(';');
        match ty.strip_suffix("[] | cdktf.IResolvable") {
            Some(elem) => (elem.to_owned(), false),
            None => (ty.to_owned(), true),
        }
    });
    Ok(Field {
        snake,
        required,
        block,
    })
}

/// The schema of a block typed `name`. Terraform schemas are trees, so the recursion ends
/// (and the input is pinned by its integrity).
fn block_schema(
    interfaces: &HashMap<&str, Vec<Field>>,
    name: &str,
) -> Result<BlockSchema, DtsError> {
    let fields = interfaces
        .get(name)
        .ok_or_else(|| DtsError::MissingInterface(name.to_owned()))?;
    let mut schema = BlockSchema::default();
    for f in fields {
        match &f.block {
            Some((ty, single)) => {
                let nested = NestedBlock {
                    required: f.required,
                    single: *single,
                    schema: block_schema(interfaces, ty)?,
                };
                schema.blocks.insert(f.snake.clone(), nested);
            }
            None => {
                let attr = Attribute {
                    required: f.required,
                };
                schema.attributes.insert(f.snake.clone(), attr);
            }
        }
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `lib/cloud-run-v2-service/index.d.ts`, with its edge cases: a map, a
    /// `boolean | cdktf.IResolvable`, `id`, a required single block, a repeatable block, the
    /// `timeouts` block, a computed getter and `<x>Input` getters.
    const SNIPPET: &str = r#"import * as cdktf from 'cdktf';
export interface SvcConfig extends cdktf.TerraformMetaArguments {
    /**
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#annotations Svc#annotations}
    */
    readonly annotations?: {
        [key: string]: string;
    };
    /**
    * Whether Terraform will be prevented from destroying the service.
    *
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#deletion_protection Svc#deletion_protection}
    */
    readonly deletionProtection?: boolean | cdktf.IResolvable;
    /**
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#id Svc#id}
    *
    * Please be aware that the id field is automatically added to all resources.
    */
    readonly id?: string;
    /**
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#location Svc#location}
    */
    readonly location: string;
    /**
    * template block
    *
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#template Svc#template}
    */
    readonly template: SvcTemplate;
    /**
    * timeouts block
    *
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#timeouts Svc#timeouts}
    */
    readonly timeouts?: SvcTimeouts;
}
export interface SvcTemplateContainers {
    /**
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#image Svc#image}
    */
    readonly image: string;
    /**
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#args Svc#args}
    */
    readonly args?: string[];
}
export interface SvcTemplate {
    /**
    * containers block
    *
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#containers Svc#containers}
    */
    readonly containers?: SvcTemplateContainers[] | cdktf.IResolvable;
}
export interface SvcTimeouts {
    /**
    * Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/svc#create Svc#create}
    */
    readonly create?: string;
}
export declare class SvcTemplateOutputReference extends cdktf.ComplexObject {
    get containers(): SvcTemplateContainersList;
}
export declare class Svc extends cdktf.TerraformResource {
    static readonly tfResourceType = "google_svc";
    get annotations(): {
        [key: string]: string;
    };
    get annotationsInput(): {
        [key: string]: string;
    } | undefined;
    get effectiveLabels(): cdktf.StringMap;
    get detectMd5Hash(): string;
    get buildAttribute(): string;
    get uri(): string;
    get location(): string;
    get locationInput(): string | undefined;
    protected synthesizeAttributes(): {
        [name: string]: any;
    };
}
"#;

    #[test]
    fn parses_arguments_blocks_and_getters() {
        let s = parse(SNIPPET).expect("snippet parses");
        assert_eq!(s.type_name, "google_svc");
        assert!(!s.data_source);
        let attrs: Vec<_> = s.body.attributes.keys().map(String::as_str).collect();
        assert_eq!(
            attrs,
            ["annotations", "deletion_protection", "id", "location"]
        );
        assert!(s.body.attributes["location"].required);
        assert!(!s.body.attributes["deletion_protection"].required);

        let template = &s.body.blocks["template"];
        assert!(template.required && template.single);
        let containers = &template.schema.blocks["containers"];
        assert!(!containers.required && !containers.single);
        assert!(containers.schema.attributes["image"].required);
        assert!(!containers.schema.attributes["args"].required);
        let timeouts = &s.body.blocks["timeouts"];
        assert!(!timeouts.required && timeouts.single);
        assert!(timeouts.schema.attributes.contains_key("create"));

        // Getters of the resource class only, without the `<x>Input` twins.
        assert!(s.getters.contains("effectiveLabels"));
        assert!(!s.getters.contains("annotationsInput"));
        assert!(!s.getters.contains("containers"));
    }

    #[test]
    fn exports_arguments_blocks_and_computed_attributes() {
        let s = parse(SNIPPET).expect("snippet parses");
        for attr in [
            "uri",
            "effective_labels",
            "location",
            "template",
            "detect_md5hash",
            "build",
        ] {
            assert!(s.exports(attr), "{attr} is exported");
        }
        assert!(!s.exports("url"));
        assert!(!s.exports("location_input"));
    }

    #[test]
    fn camelizes_like_cdktf() {
        assert_eq!(camelize("client_version"), "clientVersion");
        assert_eq!(camelize("detect_md5hash"), "detectMd5Hash");
        assert_eq!(camelize("enable_k8s_beta_apis"), "enableK8SBetaApis");
        assert_eq!(camelize("aws_v4_authentication"), "awsV4Authentication");
        assert_eq!(camelize("id"), "id");
    }

    #[test]
    fn data_source_and_missing_block_type() {
        let data = SNIPPET.replace("cdktf.TerraformResource", "cdktf.TerraformDataSource");
        assert!(parse(&data).expect("parses").data_source);
        let broken = SNIPPET.replace("export interface SvcTimeouts {", "export interface X {");
        assert!(matches!(
            parse(&broken),
            Err(DtsError::MissingInterface(name)) if name == "SvcTimeouts"
        ));
    }
}
