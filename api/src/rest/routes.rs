//! Firecracker's REST routes: each request becomes a typed [`VmmAction`] for the VMM thread,
//! and each result a response with Firecracker's status codes and error shape.

use guest_init::spec::WorkloadSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vmm::config::{
    BootSourceBody, DriveBody, DriveUpdateBody, EntropyBody, LoggerBody, MetricsBody,
    NetworkInterfaceBody, NetworkInterfaceUpdateBody, VsockBody,
};
use vmm::controller::VERSION;
use vmm::metrics::ApiCounters;
use vmm::rpc::{ActionError, ApiEnd, VmmAction, VmmData};

use crate::http::{Method, Request, Response};

/// Every route the server answers, as `METHOD /path-template`; the name its metrics use.
/// `api/openapi.yaml` must describe each of them (a test checks).
pub const ROUTES: &[&str] = &[
    "GET /",
    "GET /version",
    "GET /vm/config",
    "GET /machine-config",
    "PUT /machine-config",
    "PATCH /machine-config",
    "PUT /boot-source",
    "PUT /drives/{drive_id}",
    "PATCH /drives/{drive_id}",
    "PUT /network-interfaces/{iface_id}",
    "PATCH /network-interfaces/{iface_id}",
    "PUT /vsock",
    "PUT /entropy",
    "PUT /logger",
    "PUT /metrics",
    "PUT /workload",
    "PUT /actions",
    "PATCH /vm",
];

/// The methods `ROUTES` allows on `template`.
fn methods_on(template: &str) -> impl Iterator<Item = &'static str> + '_ {
    ROUTES
        .iter()
        .filter_map(move |r| r.split_once(' ').filter(|(_, t)| *t == template))
        .map(|(m, _)| m)
}

/// Firecracker endpoints for features Tessera does not have yet: answered 400 with the reason,
/// so a Firecracker client learns what is missing rather than that it mistyped a path.
const NOT_YET: &[(&str, &str)] = &[
    ("/balloon", "the balloon device"),
    ("/mmds", "the microVM metadata service (MMDS)"),
    ("/snapshot", "snapshots"),
    ("/cpu-config", "custom CPU templates"),
    ("/serial", "serial console configuration"),
    ("/hotplug", "hotplug"),
];

/// `PUT /actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: VmStateName,
}

#[derive(Debug, Deserialize)]
enum VmStateName {
    Paused,
    Resumed,
}

#[derive(Serialize)]
struct Version {
    /// Firecracker's field name, kept so its clients parse the answer; the value is Tessera's.
    firecracker_version: &'static str,
    tessera_version: &'static str,
}

/// Where a request goes: the VMM thread, or an answer the API thread gives itself.
#[derive(Debug)]
pub enum Routed {
    Action(VmmAction),
    Answer(Response),
}

/// Turns requests into actions, calls the VMM, and counts requests per route.
pub struct Router {
    vmm: ApiEnd,
    counters: ApiCounters,
}

impl Router {
    pub fn new(vmm: ApiEnd, counters: ApiCounters) -> Self {
        Self { vmm, counters }
    }

    pub fn handle(&mut self, request: Request) -> Response {
        let (route, routed) = route(&request);
        let response = match routed {
            Routed::Answer(response) => response,
            Routed::Action(action) => answer(self.vmm.call(action)),
        };
        self.counters.record(route, response.status >= 400);
        response
    }
}

fn answer(result: Result<VmmData, ActionError>) -> Response {
    match result {
        Ok(VmmData::Empty) => Response::no_content(),
        Ok(VmmData::InstanceInfo(info)) => Response::json(200, &info),
        Ok(VmmData::VmConfig(config)) => Response::json(200, &config),
        Ok(VmmData::MachineConfig(config)) => Response::json(200, &config),
        Err(e @ ActionError::VmmGone) => Response::fault(503, e),
        Err(e) => Response::fault(400, e),
    }
}

/// The route a request matched (an entry of [`ROUTES`], or `unknown`), and what to do with
/// it. Pure: nothing is sent to the VMM.
pub fn route(request: &Request) -> (&'static str, Routed) {
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = request.method.as_str();
    let template = match segments.as_slice() {
        [] => "/",
        ["version"] => "/version",
        ["vm", "config"] => "/vm/config",
        ["machine-config"] => "/machine-config",
        ["boot-source"] => "/boot-source",
        ["drives", id] if !id.is_empty() => "/drives/{drive_id}",
        ["network-interfaces", id] if !id.is_empty() => "/network-interfaces/{iface_id}",
        ["vsock"] => "/vsock",
        ["entropy"] => "/entropy",
        ["logger"] => "/logger",
        ["metrics"] => "/metrics",
        ["workload"] => "/workload",
        ["actions"] => "/actions",
        ["vm"] => "/vm",
        _ => return ("unknown", Routed::Answer(unknown_path(&request.path))),
    };
    let Some(route) = ROUTES
        .iter()
        .copied()
        .find(|r| r.split_once(' ') == Some((method, template)))
    else {
        return (
            "unknown",
            Routed::Answer(wrong_method(&request.method, template)),
        );
    };
    let routed = match action(request, template, segments.last().copied().unwrap_or("")) {
        Ok(routed) => routed,
        Err(message) => Routed::Answer(Response::fault(400, message)),
    };
    (route, routed)
}

fn action(request: &Request, template: &str, id: &str) -> Result<Routed, String> {
    let action = match (&request.method, template) {
        (Method::Get, "/") => VmmAction::GetInstanceInfo,
        (Method::Get, "/version") => {
            return Ok(Routed::Answer(Response::json(
                200,
                &Version {
                    firecracker_version: VERSION,
                    tessera_version: VERSION,
                },
            )))
        }
        (Method::Get, "/vm/config") => VmmAction::GetVmConfig,
        (Method::Get, "/machine-config") => VmmAction::GetMachineConfig,
        (Method::Put, "/machine-config") => VmmAction::PutMachineConfig(body(request)?),
        (Method::Patch, "/machine-config") => VmmAction::PatchMachineConfig(body(request)?),
        (Method::Put, "/boot-source") => VmmAction::PutBootSource(body::<BootSourceBody>(request)?),
        (Method::Put, "/drives/{drive_id}") => {
            let drive: DriveBody = body(request)?;
            same_id("drive_id", id, &drive.drive_id)?;
            VmmAction::PutDrive(drive)
        }
        (Method::Patch, "/drives/{drive_id}") => {
            let update: DriveUpdateBody = body(request)?;
            same_id("drive_id", id, &update.drive_id)?;
            VmmAction::PatchDrive(update)
        }
        (Method::Put, "/network-interfaces/{iface_id}") => {
            let iface: NetworkInterfaceBody = body(request)?;
            same_id("iface_id", id, &iface.iface_id)?;
            VmmAction::PutNetworkInterface(iface)
        }
        (Method::Patch, "/network-interfaces/{iface_id}") => {
            let update: NetworkInterfaceUpdateBody = body(request)?;
            same_id("iface_id", id, &update.iface_id)?;
            VmmAction::PatchNetworkInterface(update)
        }
        (Method::Put, "/vsock") => VmmAction::PutVsock(body::<VsockBody>(request)?),
        (Method::Put, "/entropy") => VmmAction::PutEntropy(body::<EntropyBody>(request)?),
        (Method::Put, "/logger") => VmmAction::PutLogger(body::<LoggerBody>(request)?),
        (Method::Put, "/metrics") => VmmAction::PutMetrics(body::<MetricsBody>(request)?),
        // Tessera's extension; the spec's own reader (version first, then the fields).
        (Method::Put, "/workload") => {
            object_body(request)?;
            let spec = WorkloadSpec::from_json(&request.body)
                .map_err(|e| format!("invalid request body: {e}"))?;
            VmmAction::PutWorkload(Box::new(spec))
        }
        (Method::Put, "/actions") => match body::<ActionBody>(request)?.action_type {
            ActionType::InstanceStart => VmmAction::InstanceStart,
            ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
            ActionType::FlushMetrics => VmmAction::FlushMetrics,
        },
        (Method::Patch, "/vm") => match body::<VmState>(request)?.state {
            VmStateName::Paused => VmmAction::Pause,
            VmStateName::Resumed => VmmAction::Resume,
        },
        // ROUTES and this match list the same routes; a test checks they agree.
        _ => {
            return Err(format!(
                "{} {} is not implemented",
                request.method, template
            ))
        }
    };
    Ok(Routed::Action(action))
}

/// The JSON body as `T`; unknown fields, wrong types and missing fields are refused with
/// serde's message, which names the field and the position.
fn body<T: DeserializeOwned>(request: &Request) -> Result<T, String> {
    object_body(request)?;
    serde_json::from_slice(&request.body).map_err(|e| format!("invalid request body: {e}"))
}

/// Refuses a body that cannot be a JSON object.
fn object_body(request: &Request) -> Result<(), String> {
    match request.body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err("the request has no body: a JSON object is expected".into()),
        // serde would read a struct from an array of its fields in order: refuse that.
        Some(b'[') => Err("the request body must be a JSON object, not an array".into()),
        Some(_) => Ok(()),
    }
}

fn same_id(field: &str, path_id: &str, body_id: &str) -> Result<(), String> {
    if path_id == body_id {
        return Ok(());
    }
    Err(format!(
        "{field} {body_id:?} in the body does not match {path_id:?} in the path"
    ))
}

fn unknown_path(path: &str) -> Response {
    if let Some((_, what)) = NOT_YET
        .iter()
        .find(|(prefix, _)| path == *prefix || path.starts_with(&format!("{prefix}/")))
    {
        return Response::fault(
            400,
            format!("{path}: {what} is not supported by Tessera yet"),
        );
    }
    Response::fault(404, format!("no such endpoint: {path}"))
}

fn wrong_method(method: &Method, template: &str) -> Response {
    let allowed: Vec<&str> = methods_on(template).collect();
    Response::fault(
        405,
        format!(
            "{method} is not allowed on {template}; use {}",
            allowed.join(" or ")
        ),
    )
    .with_header("Allow", allowed.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, body: &str) -> Request {
        Request {
            method,
            path: path.into(),
            query: None,
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    fn fault(routed: Routed) -> (u16, String) {
        match routed {
            Routed::Answer(r) => {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                (
                    r.status,
                    body["fault_message"].as_str().unwrap().to_string(),
                )
            }
            Routed::Action(a) => panic!("expected a fault, got {a:?}"),
        }
    }

    #[test]
    fn every_route_is_routed_to_itself() {
        for name in ROUTES {
            let (method, template) = name.split_once(' ').unwrap();
            let path = template
                .replace("{drive_id}", "d")
                .replace("{iface_id}", "i");
            let method = match method {
                "GET" => Method::Get,
                "PUT" => Method::Put,
                _ => Method::Patch,
            };
            let (routed_name, routed) = route(&request(method, &path, ""));
            assert_eq!(routed_name, *name, "{path}");
            if let Routed::Answer(r) = routed {
                // Only a missing body may stop a known route here.
                let text = String::from_utf8_lossy(&r.body).to_string();
                assert!(r.status < 300 || text.contains("no body"), "{path}: {text}");
            }
        }
    }

    #[test]
    fn bad_requests_get_4xx_with_a_message() {
        let (status, message) = fault(route(&request(Method::Get, "/nope", "")).1);
        assert_eq!((status, message.as_str()), (404, "no such endpoint: /nope"));

        let (status, message) = fault(route(&request(Method::Delete, "/drives/a", "")).1);
        assert_eq!(status, 405);
        assert!(message.contains("use PUT or PATCH"), "{message}");

        let (status, message) = fault(route(&request(Method::Put, "/balloon", "{}")).1);
        assert_eq!(status, 400);
        assert!(
            message.contains("balloon device is not supported"),
            "{message}"
        );

        let put = |path: &str, body: &str| fault(route(&request(Method::Put, path, body)).1);
        let (status, message) = put("/machine-config", "{\"vcpu_count\": ");
        assert_eq!(status, 400);
        assert!(
            message.starts_with("invalid request body: EOF"),
            "{message}"
        );
        let (_, message) = put("/machine-config", r#"{"vcpu_count": "two"}"#);
        assert!(message.contains("invalid type: string"), "{message}");
        let (_, message) = put("/machine-config", r#"{"vcpus": 2}"#);
        assert!(message.contains("unknown field `vcpus`"), "{message}");
        let (_, message) = put(
            "/drives/a",
            r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#,
        );
        assert!(message.contains("does not match"), "{message}");
        let (_, message) = put("/actions", r#"{"action_type": "Explode"}"#);
        assert!(message.contains("unknown variant `Explode`"), "{message}");
        let (_, message) = put("/boot-source", "");
        assert!(message.contains("no body"), "{message}");
        let (_, message) = put("/machine-config", "[2, 64]");
        assert_eq!(
            message,
            "the request body must be a JSON object, not an array"
        );
    }
}
