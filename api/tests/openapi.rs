//! `api/openapi.yaml` against the server: the routes, the request bodies the router accepts
//! and refuses, the answers of a (not started) VMM, the 404/405/400 answers, and the limits
//! the document quotes.
//!
//! Schemas are checked with a small validator for the subset of OpenAPI 3.0 the document
//! uses (it refuses any schema keyword it does not know, so nothing is skipped silently;
//! `pattern` is the one keyword it reads but does not check). It is stricter than OpenAPI:
//! an object may only have the properties its schema lists, whatever
//! `additionalProperties` says, so a response field missing from the document is caught.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use api::http::{self, HttpError, Method, Request, Response};
use api::rest::routes::{route, Routed, ROUTES};
use serde_json::{json, Value};
use vmm::config::VmConfigBody;
use vmm::controller::Vmm;
use vmm::metrics::ApiCounters;
use vmm::rpc::{ActionError, VmmAction, VmmData};
use vmm::ConsoleOutput;

const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");

/// The operation keys a path item may have (OpenAPI 3.0).
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Methods the 405 test tries on every path.
const TRY_METHODS: [&str; 7] = ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "OPTIONS"];

/// Firecracker's API paths (its `src/firecracker/swagger/firecracker.yaml`). Every path of
/// the document that is not marked `x-tessera-extension: true` must be one of them.
const FIRECRACKER_PATHS: &[&str] = &[
    "/",
    "/actions",
    "/balloon",
    "/balloon/statistics",
    "/balloon/hinting/start",
    "/balloon/hinting/status",
    "/balloon/hinting/stop",
    "/boot-source",
    "/cpu-config",
    "/drives/{drive_id}",
    "/pmem/{id}",
    "/logger",
    "/machine-config",
    "/metrics",
    "/mmds",
    "/mmds/config",
    "/entropy",
    "/serial",
    "/hotplug/memory",
    "/network-interfaces/{iface_id}",
    "/snapshot/create",
    "/snapshot/load",
    "/version",
    "/vm",
    "/vm/config",
    "/vsock",
];

/// Constraints the document states that the router's JSON parsing does not enforce, because
/// the VMM checks them after parsing (and answers 400 then): (schema, property). For these
/// the serde-agreement test expects the router to accept the body, and fails if it stops
/// doing so, so this list stays accurate.
const CHECKED_BY_THE_VMM: &[(&str, &str)] = &[
    // `PUT /machine-config` needs both; serde takes them as optional (`PATCH` shares the type).
    ("MachineConfiguration", "vcpu_count"),
    ("MachineConfiguration", "mem_size_mib"),
    // Strings on the wire; only "None" is accepted.
    ("MachineConfiguration", "huge_pages"),
    ("MachineConfiguration", "cpu_template"),
    ("PartialMachineConfiguration", "huge_pages"),
    ("PartialMachineConfiguration", "cpu_template"),
];

/// Body fields that name host files: the VMM test points them into a temporary directory.
const PATH_FIELDS: &[&str] = &[
    "kernel_image_path",
    "initrd_path",
    "path_on_host",
    "uds_path",
    "log_path",
    "metrics_path",
];

/// Of `PATH_FIELDS`, those that must exist (and are created) before the request.
const EXISTING_FILE_FIELDS: &[&str] = &["kernel_image_path", "initrd_path", "path_on_host"];

/// The fault message of a state refusal before `InstanceStart`.
fn not_before_start() -> String {
    ActionError::NotBeforeStart.to_string()
}

// ---------------------------------------------------------------------------------------
// The document

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(SPEC_PATH)
            .unwrap_or_else(|e| panic!("cannot read {SPEC_PATH}: {e}"));
        serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{SPEC_PATH} is not a YAML document this test reads: {e}"))
    })
}

/// The target of a local `$ref` (`#/components/...`).
fn ref_target(reference: &str) -> Option<&'static Value> {
    spec().pointer(reference.strip_prefix('#')?)
}

/// `value`, or what its `$ref` points at (followed to the end).
fn resolve(mut value: &'static Value) -> &'static Value {
    for _ in 0..16 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                value = ref_target(reference)
                    .unwrap_or_else(|| panic!("$ref {reference} does not resolve"));
            }
            None => return value,
        }
    }
    panic!("$ref chain too long at {value}");
}

/// One operation of the document.
struct Operation {
    /// Lowercase, as the document spells it.
    method: &'static str,
    template: &'static str,
    op: &'static Value,
}

impl Operation {
    /// The route name the server uses: `METHOD /template`.
    fn route(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.template)
    }

    fn state(&self) -> &'static str {
        self.op
            .get("x-tessera-state")
            .and_then(Value::as_str)
            .unwrap_or("(none)")
    }

    /// The JSON media type of the request body, if the operation has a body.
    fn request_content(&self) -> Option<&'static Value> {
        let body = resolve(self.op.get("requestBody")?);
        Some(
            body.pointer("/content/application~1json")
                .unwrap_or_else(|| panic!("{}: requestBody has no application/json", self.route())),
        )
    }

    fn request_schema(&self) -> Option<&'static Value> {
        self.request_content()
            .map(|content| content.get("schema").unwrap_or(&Value::Null))
    }
}

fn operations() -> Vec<Operation> {
    let paths = spec()["paths"]
        .as_object()
        .expect("the document has a `paths` object");
    let mut operations = Vec::new();
    for (template, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (method, op) in item {
            if HTTP_METHODS.contains(&method.as_str()) {
                operations.push(Operation {
                    method: HTTP_METHODS[HTTP_METHODS.iter().position(|m| m == method).unwrap()],
                    template,
                    op,
                });
            }
        }
    }
    operations
}

/// Every JSON example of an operation's request body: the media type's `example`, each of
/// its `examples` (`$ref`s followed), and the schema's own `example`. Each comes with a
/// label for messages and the example object (for its extensions), if any.
fn request_examples(op: &Operation) -> Vec<(String, Value, Option<&'static Value>)> {
    let Some(content) = op.request_content() else {
        return Vec::new();
    };
    let mut examples = Vec::new();
    if let Some(example) = content.get("example") {
        examples.push(("example".to_string(), example.clone(), None));
    }
    if let Some(named) = content.get("examples").and_then(Value::as_object) {
        for (name, example) in named {
            let example = resolve(example);
            let value = example
                .get("value")
                .unwrap_or_else(|| panic!("{}: example {name} has no value", op.route()));
            examples.push((format!("example {name:?}"), value.clone(), Some(example)));
        }
    }
    if let Some(example) = content
        .get("schema")
        .map(resolve)
        .and_then(|schema| schema.get("example"))
    {
        examples.push(("schema example".to_string(), example.clone(), None));
    }
    examples
}

/// `template` with each `{param}` replaced by the body's field of that name (so the ids in
/// the path and the body agree), or by `test-id`.
fn concrete_path(template: &str, body: Option<&Value>) -> String {
    let mut path = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').map(|e| start + e).unwrap();
        let name = &rest[start + 1..end];
        let value = body
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .unwrap_or("test-id");
        path.push_str(&rest[..start]);
        path.push_str(value);
        rest = &rest[end + 1..];
    }
    path.push_str(rest);
    path
}

fn method(name: &str) -> Method {
    Method::parse(&name.to_ascii_uppercase())
}

fn request(method_name: &str, path: &str, body: &[u8]) -> Request {
    Request {
        method: method(method_name),
        path: path.to_string(),
        query: None,
        body: body.to_vec(),
        keep_alive: true,
    }
}

/// Routes `body` (serialised) as `op`'s request, to the path its ids name.
fn route_body(op: &Operation, path_body: &Value, body: &Value) -> (&'static str, Routed) {
    let path = concrete_path(op.template, Some(path_body));
    let bytes = serde_json::to_vec(body).unwrap();
    route(&request(op.method, &path, &bytes))
}

fn fault_message(response: &Response) -> String {
    serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["fault_message"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            format!(
                "(not a fault body: {:?})",
                String::from_utf8_lossy(&response.body)
            )
        })
}

fn describe(routed: &Routed) -> String {
    match routed {
        Routed::Action(action) => format!("accepted as {action:?}"),
        Routed::Answer(r) => format!("answered {} {}", r.status, fault_message(r)),
    }
}

/// Fails with every collected problem, one per line.
fn report(what: &str, errors: Vec<String>) {
    assert!(
        errors.is_empty(),
        "{what}: {} problem(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// A validator for the schema subset the document uses

const SCHEMA_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "nullable",
    "allOf",
    "anyOf",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    // Read, not checked.
    "pattern",
    // Annotations.
    "format",
    "default",
    "example",
    "description",
    "title",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Checks `value` against `schema`, adding a message per mismatch to `errors`; `at` names
/// the place in the value (`$.drives[0].rate_limiter`).
fn validate(schema: &'static Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        errors.push(format!("{at}: schema {schema} is not an object"));
        return;
    };
    if let Some(reference) = object.get("$ref") {
        if object.len() > 1 {
            errors.push(format!(
                "{at}: a $ref has siblings, which OpenAPI 3.0 ignores"
            ));
        }
        match reference.as_str().and_then(ref_target) {
            Some(target) => validate(target, value, at, errors),
            None => errors.push(format!("{at}: $ref {reference} does not resolve")),
        }
        return;
    }
    for keyword in object.keys() {
        if !keyword.starts_with("x-") && !SCHEMA_KEYWORDS.contains(&keyword.as_str()) {
            errors.push(format!(
                "{at}: schema keyword {keyword:?} is not understood by this test"
            ));
        }
    }
    // OpenAPI 3.0.3's reading of `nullable`: it lets null through `type` (and only where a
    // `type` is given); `enum`, `allOf` and `anyOf` still apply to null.
    if let Some(kind) = object.get("type").and_then(Value::as_str) {
        let ok = match kind {
            _ if value.is_null() => object.get("nullable") == Some(&Value::Bool(true)),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => {
                errors.push(format!("{at}: unknown type {kind:?}"));
                true
            }
        };
        if !ok {
            errors.push(format!("{at}: {value} is not of type {kind}"));
            return;
        }
    }
    if let Some(enumeration) = object.get("enum").and_then(Value::as_array) {
        if !enumeration.contains(value) {
            errors.push(format!("{at}: {value} is not one of {enumeration:?}"));
        }
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = object.get("minimum").and_then(Value::as_f64) {
            if number < min {
                errors.push(format!("{at}: {value} is below the minimum {min}"));
            }
        }
        if let Some(max) = object.get("maximum").and_then(Value::as_f64) {
            if number > max {
                errors.push(format!("{at}: {value} is above the maximum {max}"));
            }
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = object.get("minLength").and_then(Value::as_u64) {
            if len < min {
                errors.push(format!("{at}: {value} is shorter than {min}"));
            }
        }
        if let Some(max) = object.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                errors.push(format!("{at}: {value} is longer than {max}"));
            }
        }
    }
    if let Some(parts) = object.get("allOf").and_then(Value::as_array) {
        for part in parts {
            validate(part, value, at, errors);
        }
    }
    if let Some(parts) = object.get("anyOf").and_then(Value::as_array) {
        let mut failures = Vec::new();
        for part in parts {
            let mut found = Vec::new();
            validate(part, value, at, &mut found);
            if found.is_empty() {
                failures.clear();
                break;
            }
            failures.push(found.join("; "));
        }
        if !failures.is_empty() {
            errors.push(format!(
                "{at}: matches no anyOf branch: [{}]",
                failures.join("] or [")
            ));
        }
    }
    if let (Some(items), Some(array)) = (object.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(items, item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(fields) = value.as_object() {
        let all = object_properties(schema);
        for name in object
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !fields.contains_key(name) {
                errors.push(format!("{at}: required property {name:?} is missing"));
            }
        }
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, field) in fields {
                if let Some(property) = properties.get(name) {
                    validate(property, field, &format!("{at}.{name}"), errors);
                }
            }
        }
        // Strict: a property no part of the schema lists is an error.
        if !all.is_empty() || object.contains_key("properties") {
            for name in fields.keys() {
                if !all.contains(name.as_str()) {
                    errors.push(format!("{at}: property {name:?} is not in the schema"));
                }
            }
        }
    }
}

/// The property names an object schema lists, through `$ref`, `allOf` and `anyOf`.
fn object_properties(schema: &'static Value) -> BTreeSet<&'static str> {
    let schema = resolve(schema);
    let mut names: BTreeSet<&str> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for part in ["allOf", "anyOf"]
        .into_iter()
        .filter_map(|keyword| schema.get(keyword).and_then(Value::as_array))
        .flatten()
    {
        names.extend(object_properties(part));
    }
    names
}

fn check_against(schema: &'static Value, value: &Value, errors: &mut Vec<String>, what: &str) {
    let mut found = Vec::new();
    validate(schema, value, "$", &mut found);
    errors.extend(found.into_iter().map(|e| format!("{what}: {e}")));
}

// ---------------------------------------------------------------------------------------
// Object schemas, for the serde-agreement test

const NULL_REF: &str = "#/components/schemas/NullValue";

/// An object schema with its component name: follows a `$ref`, and a wrapper that is
/// `anyOf` one `$ref` and `NullValue` (the document's idiom for an optional reference).
fn object_schema(schema: &'static Value) -> (Option<&'static str>, &'static Value) {
    let mut name = None;
    let mut schema = schema;
    loop {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            name = reference.rsplit('/').next();
            schema = resolve(schema);
            continue;
        }
        let branches: Vec<&'static Value> = ["allOf", "anyOf"]
            .into_iter()
            .filter_map(|keyword| schema.get(keyword).and_then(Value::as_array))
            .flatten()
            .filter(|branch| branch.get("$ref").and_then(Value::as_str) != Some(NULL_REF))
            .collect();
        match branches[..] {
            [branch] if schema.get("properties").is_none() => schema = branch,
            _ => return (name, schema),
        }
    }
}

/// Whether a schema takes null.
fn is_nullable(schema: &'static Value) -> bool {
    let mut errors = Vec::new();
    validate(schema, &Value::Null, "$", &mut errors);
    errors.is_empty()
}

fn required(schema: &'static Value) -> BTreeSet<&'static str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// A value for `schema` with every property present: its example, default, first enum
/// value or minimum where it has one.
fn generate(schema: &'static Value) -> Value {
    let (_, target) = object_schema(schema);
    for source in [schema, target] {
        if let Some(example) = source.get("example") {
            return example.clone();
        }
    }
    for source in [schema, target] {
        if let Some(default) = source.get("default") {
            if !default.is_null() {
                return default.clone();
            }
        }
        if let Some(first) = source
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.iter().find(|v| !v.is_null()))
        {
            return first.clone();
        }
    }
    match target.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut object = serde_json::Map::new();
            for (name, property) in target
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                object.insert(name.clone(), generate(property));
            }
            Value::Object(object)
        }
        Some("array") => json!([generate(&target["items"])]),
        Some("integer") | Some("number") => target.get("minimum").cloned().unwrap_or(json!(0)),
        Some("boolean") => json!(false),
        _ => json!("x"),
    }
}

/// The names in a serde message's "expected one of `a`, `b`" / "expected `a` or `b`".
fn expected_names(message: &str) -> Option<BTreeSet<String>> {
    let after = message.split_once("expected")?.1;
    let list = after.split(" at line").next().unwrap_or(after);
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

fn get_at<'a>(value: &'a Value, location: &[String]) -> Option<&'a Value> {
    location.iter().try_fold(value, |v, key| v.get(key))
}

fn get_mut_at<'a>(value: &'a mut Value, location: &[String]) -> &'a mut Value {
    location.iter().fold(value, |v, key| {
        v.get_mut(key)
            .unwrap_or_else(|| panic!("no {key} in the generated body"))
    })
}

/// Checks one object of a body (at `location` in `full`) against serde: unknown fields,
/// each property's removal, null and, for string enums, an unknown variant; then recurses
/// into object-valued properties.
fn check_object_against_serde(
    op: &Operation,
    full: &Value,
    location: &[String],
    schema: &'static Value,
    errors: &mut Vec<String>,
) {
    let (name, object) = object_schema(schema);
    let name = name.unwrap_or("(inline)");
    let at = if location.is_empty() {
        "$".to_string()
    } else {
        format!("$.{}", location.join("."))
    };
    let label = format!("{} {at} ({name})", op.route());
    let properties: Vec<(&'static String, &'static Value)> = object
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .collect();
    let documented: BTreeSet<String> = properties.iter().map(|(k, _)| (*k).clone()).collect();
    let required = required(object);
    let vmm_checked = |property: &str| CHECKED_BY_THE_VMM.contains(&(name, property));
    let try_body = |mutate: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut body = full.clone();
        mutate(get_mut_at(&mut body, location).as_object_mut().unwrap());
        route_body(op, full, &body)
    };

    // Unknown fields, and the field list serde names when it refuses one.
    let (_, routed) = try_body(&|o| {
        o.insert("x_not_a_field".into(), json!(1));
    });
    let refuses_unknown = object.get("additionalProperties") == Some(&Value::Bool(false));
    match (&routed, refuses_unknown) {
        (Routed::Answer(r), true) if r.status == 400 => {
            let message = fault_message(r);
            if !message.contains("unknown field `x_not_a_field`") {
                errors.push(format!(
                    "{label}: an unknown field is refused for another reason: {message}"
                ));
            } else if expected_names(&message).as_ref() != Some(&documented) {
                errors.push(format!(
                    "{label}: the server's fields are {:?}, the document lists {documented:?}",
                    expected_names(&message).unwrap_or_default()
                ));
            }
        }
        (Routed::Action(_), false) => {}
        (routed, true) => errors.push(format!(
            "{label}: additionalProperties is false but an unknown field was {}",
            describe(routed)
        )),
        (routed, false) => errors.push(format!(
            "{label}: the server refuses unknown fields ({}) but additionalProperties is not false",
            describe(routed)
        )),
    }

    for &(property, property_schema) in &properties {
        let label = format!("{label}.{property}");
        // Without the property.
        let (_, routed) = try_body(&|o| {
            o.remove(property);
        });
        let must_refuse = required.contains(property.as_str()) && !vmm_checked(property);
        match (&routed, must_refuse) {
            (Routed::Action(_), false) => {}
            (Routed::Answer(r), true)
                if fault_message(r).contains(&format!("missing field `{property}`")) => {}
            (routed, true) => errors.push(format!(
                "{label}: required, but a body without it was {}",
                describe(routed)
            )),
            (routed, false) => errors.push(format!(
                "{label}: optional, but a body without it was {}",
                describe(routed)
            )),
        }
        // Set to null.
        let (_, routed) = try_body(&|o| {
            o.insert(property.clone(), Value::Null);
        });
        let null_ok = is_nullable(property_schema) || vmm_checked(property);
        match (&routed, null_ok) {
            (Routed::Action(_), true) => {}
            (Routed::Answer(r), false)
                if r.status == 400 && fault_message(r).starts_with("invalid request body: ") => {}
            (routed, true) => errors.push(format!(
                "{label}: nullable, but null was {}",
                describe(routed)
            )),
            (routed, false) => errors.push(format!(
                "{label}: not nullable, but null was {}",
                describe(routed)
            )),
        }
        // An unknown variant of a string enum.
        let resolved = resolve(property_schema);
        if let (Some(values), Some("string")) = (
            resolved.get("enum").and_then(Value::as_array),
            resolved.get("type").and_then(Value::as_str),
        ) {
            let documented: BTreeSet<String> = values
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            let (_, routed) = try_body(&|o| {
                o.insert(property.clone(), json!("NotAVariant"));
            });
            match (&routed, vmm_checked(property)) {
                (Routed::Action(_), true) => {}
                (Routed::Answer(r), false)
                    if fault_message(r).contains("unknown variant `NotAVariant`") =>
                {
                    let server = expected_names(&fault_message(r)).unwrap_or_default();
                    if server != documented {
                        errors.push(format!(
                            "{label}: the server's values are {server:?}, the document's {documented:?}"
                        ));
                    }
                }
                (routed, _) => errors.push(format!(
                    "{label}: an unknown enum value was {}",
                    describe(routed)
                )),
            }
        }
        // Nested objects.
        let mut nested = location.to_vec();
        nested.push(property.clone());
        if get_at(full, &nested).is_some_and(Value::is_object) {
            check_object_against_serde(op, full, &nested, property_schema, errors);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn the_document_is_openapi_3_0_with_the_crate_version() {
    let spec = spec();
    let openapi = spec["openapi"].as_str().unwrap_or("");
    assert!(
        openapi.starts_with("3.0."),
        "openapi is {openapi:?}, expected 3.0.x"
    );
    assert_eq!(
        spec["info"]["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "info.version must be the api crate's version"
    );
    let description = spec["info"]["description"].as_str().unwrap_or("");
    assert!(
        description.contains("x-tessera-extension: true"),
        "info.description must say how Tessera's own endpoints will be marked"
    );
}

#[test]
fn every_route_is_an_operation() {
    let documented: BTreeSet<String> = operations().iter().map(Operation::route).collect();
    let missing: Vec<String> = ROUTES
        .iter()
        .filter(|r| !documented.contains(**r))
        .map(|r| format!("route {r} has no operation in openapi.yaml"))
        .collect();
    report("routes missing from the document", missing);
}

#[test]
fn every_operation_is_a_route() {
    let mut errors = Vec::new();
    for op in operations() {
        if !ROUTES.contains(&op.route().as_str()) {
            errors.push(format!(
                "operation {} is not in api::rest::routes::ROUTES",
                op.route()
            ));
        }
    }
    for (template, item) in spec()["paths"].as_object().unwrap() {
        for key in item.as_object().unwrap().keys() {
            let known = HTTP_METHODS.contains(&key.as_str())
                || ["summary", "description", "parameters", "servers"].contains(&key.as_str())
                || key.starts_with("x-");
            if !known {
                errors.push(format!(
                    "{template}: unexpected key {key:?} in the path item"
                ));
            }
        }
        // Each template parameter is declared, as a required path parameter.
        let declared: BTreeSet<&str> = item
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(resolve)
            .filter(|p| p["in"] == "path" && p["required"] == true)
            .filter_map(|p| p["name"].as_str())
            .collect();
        let used: BTreeSet<&str> = template
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        if declared != used {
            errors.push(format!(
                "{template}: path parameters declared {declared:?}, used {used:?}"
            ));
        }
    }
    report("operations that are not routes", errors);
}

#[test]
fn every_request_example_is_accepted_by_the_router() {
    let mut errors = Vec::new();
    let mut checked = 0;
    for op in operations() {
        if op.request_content().is_none() {
            continue;
        }
        let examples = request_examples(&op);
        if examples.is_empty() {
            errors.push(format!("{}: the request body has no example", op.route()));
        }
        for (label, example, _) in examples {
            let path = concrete_path(op.template, Some(&example));
            let (name, routed) = route_body(&op, &example, &example);
            checked += 1;
            if !matches!(routed, Routed::Action(_)) {
                errors.push(format!(
                    "{} {label} (to {path}): {}",
                    op.route(),
                    describe(&routed)
                ));
            }
            if name != op.route() {
                errors.push(format!(
                    "{} {label} (to {path}): routed as {name}",
                    op.route()
                ));
            }
        }
    }
    report("request examples", errors);
    assert!(checked >= 14, "only {checked} request examples were found");
}

#[test]
fn operations_without_a_body_route_to_an_action_or_a_2xx_answer() {
    let mut errors = Vec::new();
    for op in operations()
        .iter()
        .filter(|op| op.request_content().is_none())
    {
        let path = concrete_path(op.template, None);
        let (name, routed) = route(&request(op.method, &path, b""));
        if name != op.route() {
            errors.push(format!("{} (to {path}): routed as {name}", op.route()));
        }
        match &routed {
            Routed::Action(_) => {}
            Routed::Answer(r) if (200..300).contains(&r.status) => {}
            routed => errors.push(format!("{} (to {path}): {}", op.route(), describe(routed))),
        }
    }
    report("operations without a request body", errors);
}

#[test]
fn operations_with_a_body_require_it() {
    let mut errors = Vec::new();
    for op in operations() {
        let Some(body) = op.op.get("requestBody").map(resolve) else {
            continue;
        };
        if body.get("required") != Some(&Value::Bool(true)) {
            errors.push(format!("{}: requestBody.required is not true", op.route()));
        }
        let path = concrete_path(op.template, None);
        let (_, routed) = route(&request(op.method, &path, b""));
        match &routed {
            Routed::Answer(r) if r.status == 400 && fault_message(r).contains("no body") => {}
            routed => errors.push(format!(
                "{} without a body: {}, expected 400",
                op.route(),
                describe(routed)
            )),
        }
    }
    report("request bodies", errors);
}

#[test]
fn every_ref_resolves() {
    fn walk(value: &'static Value, at: String, refs: &mut Vec<(String, &'static str)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "$ref" {
                        refs.push((at.clone(), child.as_str().unwrap_or("(not a string)")));
                    } else {
                        walk(child, format!("{at}/{key}"), refs);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), refs);
                }
            }
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(spec(), String::new(), &mut refs);
    let mut errors = Vec::new();
    let mut used = BTreeSet::new();
    for (at, reference) in &refs {
        if !reference.starts_with("#/components/") {
            errors.push(format!("{at}: $ref {reference} is not a local component"));
        } else if ref_target(reference).is_none() {
            errors.push(format!("{at}: $ref {reference} does not resolve"));
        }
        used.insert(*reference);
    }
    for name in spec()["components"]["schemas"].as_object().unwrap().keys() {
        if !used.contains(format!("#/components/schemas/{name}").as_str()) {
            errors.push(format!("schema {name} is never used"));
        }
    }
    report("$refs", errors);
    assert!(refs.len() > 20, "only {} $refs found", refs.len());
}

#[test]
fn examples_and_defaults_match_their_schemas() {
    let mut errors = Vec::new();
    // Every schema node's own `example` and `default`.
    fn walk_schema(schema: &'static Value, at: &str, errors: &mut Vec<String>) {
        let Some(object) = schema.as_object() else {
            return;
        };
        for keyword in ["example", "default"] {
            if let Some(value) = object.get(keyword) {
                check_against(schema, value, errors, &format!("{at} {keyword}"));
            }
        }
        for (name, property) in object
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            walk_schema(property, &format!("{at}.{name}"), errors);
        }
        if let Some(items) = object.get("items") {
            walk_schema(items, &format!("{at}[]"), errors);
        }
        for (i, part) in object
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            walk_schema(part, &format!("{at}.allOf[{i}]"), errors);
        }
    }
    for (name, schema) in spec()["components"]["schemas"].as_object().unwrap() {
        walk_schema(schema, &format!("schema {name}"), &mut errors);
    }
    // Every media type example, of requests and of responses.
    let mut media: Vec<(String, &'static Value)> = Vec::new();
    for op in operations() {
        if let Some(content) = op.request_content() {
            media.push((format!("{} request", op.route()), content));
        }
        for (status, response) in op.op["responses"].as_object().unwrap() {
            if let Some(content) = resolve(response).pointer("/content/application~1json") {
                media.push((format!("{} {status} response", op.route()), content));
            }
        }
    }
    for (what, content) in media {
        let schema = &content["schema"];
        if let Some(example) = content.get("example") {
            check_against(schema, example, &mut errors, &format!("{what} example"));
        }
        for (name, example) in content
            .get("examples")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            check_against(
                schema,
                &resolve(example)["value"],
                &mut errors,
                &format!("{what} example {name:?}"),
            );
        }
    }
    // The configuration example is a config file the VMM reads.
    let vm_config = &spec()["paths"]["/vm/config"]["get"]["responses"]["200"]["content"]
        ["application/json"]["example"];
    if let Err(e) = serde_json::from_value::<VmConfigBody>(vm_config.clone()) {
        errors.push(format!("GET /vm/config example is not a config file: {e}"));
    }
    report("examples and defaults", errors);
}

#[test]
fn request_schemas_match_what_the_router_parses() {
    let mut errors = Vec::new();
    for op in operations() {
        let Some(schema) = op.request_schema() else {
            continue;
        };
        // Every documented field at once.
        let full = generate(schema);
        check_against(
            schema,
            &full,
            &mut errors,
            &format!("{} generated body", op.route()),
        );
        let (name, routed) = route_body(&op, &full, &full);
        if name != op.route() || !matches!(routed, Routed::Action(_)) {
            errors.push(format!(
                "{}: a body with every documented field ({full}) was routed as {name} and {}",
                op.route(),
                describe(&routed)
            ));
            continue;
        }
        check_object_against_serde(&op, &full, &[], schema, &mut errors);
    }
    report("request schemas against the router", errors);
}

#[test]
fn wrong_methods_get_405_with_the_documented_methods_in_allow() {
    let mut errors = Vec::new();
    let error_schema = &spec()["components"]["schemas"]["Error"];
    for (template, item) in spec()["paths"].as_object().unwrap() {
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| HTTP_METHODS.contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        let path = concrete_path(template, None);
        for method_name in TRY_METHODS {
            if documented.contains(method_name) {
                continue;
            }
            let (name, routed) = route(&request(method_name, &path, b"{}"));
            let Routed::Answer(response) = &routed else {
                errors.push(format!("{method_name} {path}: {}", describe(&routed)));
                continue;
            };
            if response.status != 405 || name != "unknown" {
                errors.push(format!(
                    "{method_name} {path}: {} as {name}, expected 405",
                    describe(&routed)
                ));
                continue;
            }
            let allow: BTreeSet<String> = response
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("allow"))
                .flat_map(|(_, v)| v.split(',').map(|m| m.trim().to_string()))
                .collect();
            if allow != documented {
                errors.push(format!(
                    "{method_name} {path}: Allow is {allow:?}, the document has {documented:?}"
                ));
            }
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            check_against(
                error_schema,
                &body,
                &mut errors,
                &format!("{method_name} {path} 405 body"),
            );
        }
    }
    report("405 answers", errors);
}

#[test]
fn unknown_and_not_yet_supported_paths() {
    let mut errors = Vec::new();
    let error_schema = &spec()["components"]["schemas"]["Error"];
    let not_supported = spec()["x-tessera-not-supported"]
        .as_array()
        .expect("x-tessera-not-supported lists Firecracker paths Tessera refuses");
    for entry in not_supported {
        let path = entry["path"].as_str().unwrap();
        let feature = entry["feature"].as_str().unwrap();
        if spec()["paths"].get(path).is_some() {
            errors.push(format!("{path} is both an operation and not supported"));
        }
        if !FIRECRACKER_PATHS.contains(&path) {
            errors.push(format!(
                "{path} is listed as not supported but is not a Firecracker path"
            ));
        }
        for method_name in ["GET", "PUT", "PATCH"] {
            let (_, routed) = route(&request(method_name, path, b"{}"));
            let expected = format!("{path}: {feature} is not supported by Tessera yet");
            match &routed {
                Routed::Answer(r) if r.status == 400 && fault_message(r) == expected => {
                    let body: Value = serde_json::from_slice(&r.body).unwrap();
                    check_against(
                        error_schema,
                        &body,
                        &mut errors,
                        &format!("{method_name} {path}"),
                    );
                }
                routed => errors.push(format!(
                    "{method_name} {path}: {}, expected 400 {expected:?}",
                    describe(routed)
                )),
            }
        }
    }
    for path in [
        "/nope",
        "/drives",
        "/drives/a/b",
        "/vm/config/x",
        "/pmem/pm0",
        "/machine-configs",
    ] {
        let (name, routed) = route(&request("GET", path, b""));
        match &routed {
            Routed::Answer(r)
                if r.status == 404
                    && name == "unknown"
                    && fault_message(r).contains("no such endpoint") => {}
            routed => errors.push(format!("GET {path}: {}, expected 404", describe(routed))),
        }
    }
    // Paths are Firecracker's unless marked as Tessera's own.
    for (template, item) in spec()["paths"].as_object().unwrap() {
        let extension = item.get("x-tessera-extension");
        let firecracker = FIRECRACKER_PATHS.contains(&template.as_str());
        match extension {
            None | Some(Value::Bool(false)) if !firecracker => errors.push(format!(
                "{template} is not a Firecracker path: mark it `x-tessera-extension: true`"
            )),
            Some(Value::Bool(true)) if firecracker => errors.push(format!(
                "{template} is a Firecracker path but is marked as a Tessera extension"
            )),
            Some(v) if !v.is_boolean() => {
                errors.push(format!("{template}: x-tessera-extension must be a boolean"))
            }
            _ => {}
        }
    }
    report("unknown and unsupported paths", errors);
}

#[test]
fn every_operation_documents_its_answers() {
    let mut errors = Vec::new();
    let mut ids = BTreeMap::new();
    let error_ref = "#/components/schemas/Error";
    for op in operations() {
        let route = op.route();
        let responses = op.op["responses"].as_object().unwrap();
        let success: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
        let expected = if op.method == "get" { "200" } else { "204" };
        if success != [expected] {
            errors.push(format!(
                "{route}: success responses {success:?}, expected [{expected}]"
            ));
        }
        match responses.get(expected).map(resolve) {
            Some(r) if expected == "204" && r.get("content").is_some() => {
                errors.push(format!("{route}: a 204 has no content"))
            }
            Some(r)
                if expected == "200"
                    && r.pointer("/content/application~1json/schema").is_none() =>
            {
                errors.push(format!("{route}: the 200 has no JSON schema"))
            }
            _ => {}
        }
        for status in ["400", "default"] {
            let schema = responses
                .get(status)
                .map(resolve)
                .and_then(|r| r.pointer("/content/application~1json/schema/$ref"));
            if schema.and_then(Value::as_str) != Some(error_ref) {
                errors.push(format!(
                    "{route}: response {status} must have the Error schema"
                ));
            }
        }
        if let Some(id) = op.op["operationId"].as_str() {
            if let Some(other) = ids.insert(id.to_string(), route.clone()) {
                errors.push(format!("{route}: operationId {id} is also {other}'s"));
            }
        } else {
            errors.push(format!("{route}: no operationId"));
        }
        let summary = op.op["summary"].as_str().unwrap_or("");
        let state_ok = match op.state() {
            "pre-boot" => summary.contains("Pre-boot only"),
            "runtime" => summary.contains("Runtime only"),
            "any" => !summary.contains("only."),
            _ => false,
        };
        if !state_ok {
            errors.push(format!(
                "{route}: x-tessera-state {:?} and summary {summary:?} disagree",
                op.state()
            ));
        }
    }
    for (name, response) in spec()["components"]["responses"].as_object().unwrap() {
        if response
            .pointer("/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
            != Some(error_ref)
        {
            errors.push(format!(
                "components.responses.{name} must have the Error schema"
            ));
        }
    }
    if spec()
        .pointer("/components/responses/MethodNotAllowed/headers/Allow")
        .is_none()
    {
        errors.push("the 405 response must document the Allow header".into());
    }
    report("documented answers", errors);
}

/// Every variant, so a new one fails to compile here until the document covers its status.
fn all_http_errors() -> Vec<HttpError> {
    let errors = vec![
        HttpError::Malformed("x".into()),
        HttpError::NotOriginForm("x".into()),
        HttpError::UnsupportedVersion("HTTP/2.0".into()),
        HttpError::HeadersTooLarge {
            limit: http::MAX_HEADER_BYTES,
        },
        HttpError::TooManyHeaders {
            limit: http::MAX_HEADERS,
        },
        HttpError::InvalidContentLength("x".into()),
        HttpError::ConflictingContentLength {
            first: 1,
            second: 2,
        },
        HttpError::BodyTooLarge {
            length: 1 << 20,
            limit: http::MAX_BODY_BYTES,
        },
        HttpError::TransferEncoding("chunked".into()),
        HttpError::UnsupportedExpectation("x".into()),
        HttpError::RequestTimeout { millis: 5000 },
    ];
    for error in &errors {
        match error {
            HttpError::Malformed(_)
            | HttpError::NotOriginForm(_)
            | HttpError::UnsupportedVersion(_)
            | HttpError::HeadersTooLarge { .. }
            | HttpError::TooManyHeaders { .. }
            | HttpError::InvalidContentLength(_)
            | HttpError::ConflictingContentLength { .. }
            | HttpError::BodyTooLarge { .. }
            | HttpError::TransferEncoding(_)
            | HttpError::UnsupportedExpectation(_)
            | HttpError::RequestTimeout { .. } => {}
        }
    }
    errors
}

#[test]
fn statuses_and_limits_quoted_by_the_document_match_the_code() {
    use api::http::server::{
        DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT,
    };
    let mut errors = Vec::new();
    let intro = spec()["info"]["description"].as_str().unwrap_or("");
    let responses = &spec()["components"]["responses"];
    let text = |name: &str| responses[name]["description"].as_str().unwrap_or("");
    // Every status the server can answer has a row in the introduction's table.
    let mut statuses: BTreeSet<u16> = all_http_errors().iter().map(HttpError::status).collect();
    statuses.extend([400, 404, 405, 500, 503]);
    for status in statuses {
        if !intro.contains(&format!("| {status} |")) {
            errors.push(format!("status {status} has no row in info.description"));
        }
    }
    let quoted = [
        ("ContentTooLarge", http::MAX_BODY_BYTES.to_string()),
        ("HeaderFieldsTooLarge", http::MAX_HEADER_BYTES.to_string()),
        ("HeaderFieldsTooLarge", http::MAX_HEADERS.to_string()),
        (
            "RequestTimeout",
            format!("{} s", DEFAULT_REQUEST_TIMEOUT.as_secs()),
        ),
        (
            "RequestTimeout",
            format!("{} s", DEFAULT_IDLE_TIMEOUT.as_secs()),
        ),
        ("ServiceUnavailable", DEFAULT_MAX_CONNECTIONS.to_string()),
    ];
    for (name, value) in quoted {
        if !text(name).contains(&value) {
            errors.push(format!("components.responses.{name} should say {value}"));
        }
        if !intro.contains(&value) {
            errors.push(format!("info.description should say {value}"));
        }
    }
    let schemas = &spec()["components"]["schemas"];
    for name in ["MachineConfiguration", "PartialMachineConfiguration"] {
        let p = &schemas[name]["properties"];
        let limits = [
            (&p["vcpu_count"]["minimum"], 1),
            (
                &p["vcpu_count"]["maximum"],
                u64::from(vmm::config::MAX_VCPUS),
            ),
            (&p["mem_size_mib"]["minimum"], vmm::config::MIN_MEM_MIB),
            (&p["mem_size_mib"]["maximum"], vmm::config::MAX_MEM_MIB),
        ];
        for (documented, actual) in limits {
            if documented.as_u64() != Some(actual) {
                errors.push(format!(
                    "{name}: a limit is {documented}, the code's is {actual}"
                ));
            }
        }
    }
    let boot_args = &schemas["BootSource"]["properties"]["boot_args"];
    if boot_args["default"].as_str() != Some(vmm::kernel_cmdline::DEFAULT_CMDLINE) {
        errors.push(
            "BootSource.boot_args default is not vmm::kernel_cmdline::DEFAULT_CMDLINE".into(),
        );
    }
    let max_cmdline = (vmm::x86_64::layout::CMDLINE_MAX_SIZE - 1) as u64;
    if boot_args["maxLength"].as_u64() != Some(max_cmdline) {
        errors.push(format!(
            "BootSource.boot_args maxLength should be {max_cmdline}"
        ));
    }
    report("quoted limits", errors);
}

/// A directory for the files the VMM test's requests name; removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("tessera-openapi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `body` with its host paths moved into `dir`, the files that must exist created.
fn localise(body: &Value, dir: &Path) -> Value {
    match body {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = match (PATH_FIELDS.contains(&key.as_str()), value.as_str()) {
                        (true, Some(original)) => {
                            let file = Path::new(original).file_name().unwrap();
                            let local = dir.join(file);
                            if EXISTING_FILE_FIELDS.contains(&key.as_str()) && !local.exists() {
                                std::fs::write(&local, [0u8; 4096]).unwrap();
                            }
                            json!(local.to_str().unwrap())
                        }
                        _ => localise(value, dir),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn data_json(data: VmmData) -> Option<Value> {
    match data {
        VmmData::Empty => None,
        VmmData::InstanceInfo(info) => Some(serde_json::to_value(info).unwrap()),
        VmmData::VmConfig(config) => Some(serde_json::to_value(*config).unwrap()),
        VmmData::MachineConfig(config) => Some(serde_json::to_value(config).unwrap()),
    }
}

/// Drives a VMM that has not started (no KVM needed) with the document's examples: pre-boot
/// operations succeed, runtime operations are refused as not before start, and each `GET`
/// answers a body its schema accepts.
#[test]
fn a_vmm_before_start_accepts_the_examples_and_answers_as_documented() {
    vmm::logger::init(log::LevelFilter::Warn);
    let dir = TempDir::new();
    let mut vmm = Vmm::new(
        "openapi-test".into(),
        ApiCounters::default(),
        ConsoleOutput::Stdio,
        Instant::now(),
        vmm::seccomp::Filters::none(),
    );
    let mut errors = Vec::new();
    let mut ops = operations();
    // Configure first, then read and run the actions, then try the runtime operations.
    ops.sort_by_key(|op| match op.state() {
        "pre-boot" => 0,
        "any" => 1,
        _ => 2,
    });
    for op in &ops {
        let mut requests: Vec<(String, Option<Value>, &str)> = request_examples(op)
            .into_iter()
            .map(|(label, body, example)| {
                let state = example
                    .and_then(|e| e.get("x-tessera-state"))
                    .and_then(Value::as_str)
                    .unwrap_or(op.state());
                (label, Some(localise(&body, &dir.0)), state)
            })
            .collect();
        if op.request_content().is_none() {
            requests.push(("(no body)".into(), None, op.state()));
        }
        let ok_schema = op.op["responses"]
            .get("200")
            .map(resolve)
            .map(|r| &r["content"]["application/json"]["schema"]);
        for (label, body, state) in requests {
            let what = format!("{} {label}", op.route());
            let path = concrete_path(op.template, body.as_ref());
            let bytes = body
                .as_ref()
                .map(|b| serde_json::to_vec(b).unwrap())
                .unwrap_or_default();
            let action = match route(&request(op.method, &path, &bytes)).1 {
                Routed::Action(action) => action,
                Routed::Answer(response) if (200..300).contains(&response.status) => {
                    // Answered by the API thread itself (GET /version).
                    match (ok_schema, serde_json::from_slice::<Value>(&response.body)) {
                        (Some(schema), Ok(body)) => {
                            check_against(schema, &body, &mut errors, &what)
                        }
                        _ => errors.push(format!(
                            "{what}: {} answer without a documented body",
                            response.status
                        )),
                    }
                    continue;
                }
                Routed::Answer(response) => {
                    errors.push(format!(
                        "{what}: answered {} {}",
                        response.status,
                        fault_message(&response)
                    ));
                    continue;
                }
            };
            if matches!(action, VmmAction::InstanceStart) {
                // Booting needs KVM and a kernel; `controller::run` handles it, not `handle`.
                continue;
            }
            let result = vmm.handle(action);
            match (state, result) {
                ("runtime", Err(e)) if e.to_string() == not_before_start() => {}
                ("runtime", other) => errors.push(format!(
                    "{what}: runtime only, but before start it gave {:?}",
                    other.map(data_json).map_err(|e| e.to_string())
                )),
                (_, Err(e)) => errors.push(format!("{what}: refused: {e}")),
                (_, Ok(data)) => match (data_json(data), ok_schema) {
                    (None, None) => {}
                    (Some(body), Some(schema)) => check_against(schema, &body, &mut errors, &what),
                    (body, _) => errors.push(format!(
                        "{what}: answered {body:?}, the document says {}",
                        if ok_schema.is_some() {
                            "200 with a body"
                        } else {
                            "204"
                        }
                    )),
                },
            }
        }
    }

    // What the examples configured reads back, and is a config file.
    match vmm.handle(VmmAction::GetVmConfig).map(data_json) {
        Ok(Some(config)) => {
            let drives: BTreeSet<&str> = config["drives"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["drive_id"].as_str())
                .collect();
            if drives != BTreeSet::from(["rootfs", "data-1"]) {
                errors.push(format!(
                    "GET /vm/config after the examples has drives {drives:?}"
                ));
            }
            for section in ["boot-source", "vsock", "entropy", "logger", "metrics"] {
                if config[section].is_null() {
                    errors.push(format!("GET /vm/config: no {section} after its example"));
                }
            }
            if let Err(e) = serde_json::from_value::<VmConfigBody>(config) {
                errors.push(format!("GET /vm/config is not a config file: {e}"));
            }
        }
        other => errors.push(format!(
            "GET /vm/config: {:?}",
            other.map_err(|e| e.to_string())
        )),
    }
    // The FlushMetrics example wrote a line with the groups `PUT /metrics` describes.
    let metrics_path = spec()["paths"]["/metrics"]["put"]["requestBody"]["content"]
        ["application/json"]["examples"]["file"]["value"]["metrics_path"]
        .as_str()
        .map(|p| dir.0.join(Path::new(p).file_name().unwrap()));
    let lines = metrics_path
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let metrics_doc = spec()["paths"]["/metrics"]["put"]["description"]
        .as_str()
        .unwrap();
    match lines.lines().last().map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(line))) => {
            for group in line.keys() {
                if !metrics_doc.contains(&format!("`{group}`")) {
                    errors.push(format!(
                        "metrics group {group} is not described by PUT /metrics"
                    ));
                }
            }
        }
        other => errors.push(format!("no metrics line after FlushMetrics: {other:?}")),
    }
    report("the VMM before start", errors);
}
