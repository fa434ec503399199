//! The schemas of docs/openapi.yaml (`components/schemas`), generated from the request,
//! response and event types in `body` and `json`. tests/openapi.rs fails when the document's
//! copy is stale and rewrites it on request, so the document follows the types, never the
//! other way round.

use schemars::generate::{Contract, SchemaSettings};
use schemars::SchemaGenerator;
use serde_json::{Map, Value};

use super::body::{DockerTaskRequest, ListLimit, ShellTaskRequest};
use super::json::{
    AgentList, AgentTaskList, Cancelled, Created, ErrorBody, GapEvent, Health, Ready,
    ResponseEvent, ShutdownEvent, Status, StatusEvent, TaskDetail, TaskList,
};

/// Every component schema of the API, by name: request types as they are read, response and
/// event types as they are written.
pub fn components() -> Map<String, Value> {
    let mut requests = generator(Contract::Deserialize);
    requests.subschema_for::<ShellTaskRequest>();
    requests.subschema_for::<DockerTaskRequest>();
    requests.subschema_for::<ListLimit>();
    requests.subschema_for::<Status>();

    let mut responses = generator(Contract::Serialize);
    responses.subschema_for::<Created>();
    responses.subschema_for::<TaskList>();
    responses.subschema_for::<AgentTaskList>();
    responses.subschema_for::<TaskDetail>();
    responses.subschema_for::<Cancelled>();
    responses.subschema_for::<AgentList>();
    responses.subschema_for::<Health>();
    responses.subschema_for::<Ready>();
    responses.subschema_for::<ErrorBody>();
    responses.subschema_for::<StatusEvent>();
    responses.subschema_for::<ResponseEvent>();
    responses.subschema_for::<ShutdownEvent>();
    responses.subschema_for::<GapEvent>();

    let mut all = requests.take_definitions(true);
    for (name, schema) in responses.take_definitions(true) {
        if let Some(same_name) = all.get(&name) {
            // One name, one schema: a type read and written the same way appears once.
            assert_eq!(same_name, &schema, "two schemas named {name}");
        }
        all.insert(name, schema);
    }
    all
}

/// JSON Schema 2020-12, the dialect of OpenAPI 3.1 (3.0's could not say what an environment
/// variable's name must be: it has no `propertyNames`).
fn generator(contract: Contract) -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.contract = contract;
            s.meta_schema = None;
            s.definitions_path = "/components/schemas".into();
        })
        .into_generator()
}
