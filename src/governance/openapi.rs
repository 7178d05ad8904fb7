//! The OpenAPI 3 document (`/docs/openapi.json`), generated from the CapabilityStatement so it
//! can only describe what the server really serves.

use serde_json::{Map, Value, json};

fn outcome_responses(ok: &str) -> Value {
    json!({
        ok: {"description": "Success", "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/Resource"}}}},
        "400": {"$ref": "#/components/responses/OperationOutcome"},
        "401": {"$ref": "#/components/responses/OperationOutcome"},
        "403": {"$ref": "#/components/responses/OperationOutcome"},
        "429": {"$ref": "#/components/responses/Throttled"},
    })
}

fn search_parameters(resource: &Value) -> Vec<Value> {
    resource["searchParam"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            json!({
                "name": p["name"],
                "in": "query",
                "required": false,
                "description": format!("{} ({})", p["documentation"].as_str().unwrap_or(""), p["type"].as_str().unwrap_or("")),
                "schema": {"type": "string"},
            })
        })
        .collect()
}

fn interactions(resource: &Value) -> Vec<&str> {
    resource["interaction"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["code"].as_str())
        .collect()
}

/// Builds the OpenAPI document for the CapabilityStatement `cs` served at `origin`.
pub fn document(cs: &Value, origin: &str) -> Value {
    let mut paths = Map::new();
    let id_param =
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let body = json!({"required": true, "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/Resource"}}}});
    let sandbox = json!({"name": "X-Shcr-Sandbox", "in": "header", "required": false,
        "description": "true: run the write through validation and the transaction logic, then roll back (nothing is stored)",
        "schema": {"type": "boolean"}});
    for rest in cs["rest"].as_array().into_iter().flatten() {
        for r in rest["resource"].as_array().into_iter().flatten() {
            let t = r["type"].as_str().unwrap_or_default();
            let codes = interactions(r);
            let mut type_ops = Map::new();
            if codes.contains(&"search-type") {
                type_ops.insert("get".into(), json!({
                    "tags": [t], "summary": format!("Search {t}"), "operationId": format!("search{t}"),
                    "parameters": search_parameters(r), "responses": outcome_responses("200"),
                }));
            }
            if codes.contains(&"create") {
                type_ops.insert("post".into(), json!({
                    "tags": [t], "summary": format!("Create a {t}"), "operationId": format!("create{t}"),
                    "parameters": [sandbox], "requestBody": body, "responses": outcome_responses("201"),
                }));
            }
            paths.insert(format!("/fhir/{t}"), Value::Object(type_ops));
            let mut instance_ops = Map::new();
            if codes.contains(&"read") {
                instance_ops.insert("get".into(), json!({
                    "tags": [t], "summary": format!("Read a {t}"), "operationId": format!("read{t}"),
                    "parameters": [id_param], "responses": outcome_responses("200"),
                }));
            }
            if codes.contains(&"update") {
                instance_ops.insert("put".into(), json!({
                    "tags": [t], "summary": format!("Update (or create) a {t}"), "operationId": format!("update{t}"),
                    "parameters": [id_param, sandbox], "requestBody": body, "responses": outcome_responses("200"),
                }));
            }
            if codes.contains(&"delete") {
                instance_ops.insert("delete".into(), json!({
                    "tags": [t], "summary": format!("Delete a {t}"), "operationId": format!("delete{t}"),
                    "parameters": [id_param, sandbox], "responses": outcome_responses("200"),
                }));
            }
            paths.insert(format!("/fhir/{t}/{{id}}"), Value::Object(instance_ops));
            if r["operation"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["name"] == "validate")
            {
                paths.insert(format!("/fhir/{t}/$validate"), json!({"post": {
                    "tags": [t], "summary": format!("Validate a {t} (R4 and a profile); nothing is stored"),
                    "operationId": format!("validate{t}"),
                    "parameters": [{"name": "profile", "in": "query", "required": false, "schema": {"type": "string"},
                        "description": format!("profile canonical; shcr knows {}", r["supportedProfile"])},
                        {"name": "mode", "in": "query", "required": false, "schema": {"type": "string", "enum": ["create", "update", "profile"]}}],
                    "requestBody": body, "responses": outcome_responses("200"),
                }}));
            }
        }
        paths.insert("/fhir".into(), json!({
            "post": {"tags": ["system"], "summary": "transaction or batch Bundle", "operationId": "transaction",
                     "parameters": [sandbox], "requestBody": body, "responses": outcome_responses("200")},
            "get": {"tags": ["system"], "summary": "Search across types (_type)", "operationId": "searchSystem",
                    "responses": outcome_responses("200")},
        }));
        for op in rest["operation"].as_array().into_iter().flatten() {
            let name = op["name"].as_str().unwrap_or_default();
            let (path, method) = match name {
                "validate" => ("/fhir/$validate".to_string(), "post"),
                "process-message" => ("/fhir/$process-message".to_string(), "post"),
                "status" | "events" => (format!("/fhir/Subscription/{{id}}/${name}"), "get"),
                other => (format!("/fhir/${other}"), "post"),
            };
            let mut op_json = json!({"tags": ["operations"], "summary": format!("${name}"),
                "operationId": format!("op-{name}"), "externalDocs": {"url": op["definition"]},
                "responses": outcome_responses("200")});
            if method == "post" {
                op_json["requestBody"] = body.clone();
            } else {
                op_json["parameters"] = json!([id_param]);
            }
            paths.insert(path, json!({ method: op_json }));
        }
    }
    paths.insert("/fhir/metadata".into(), json!({"get": {"tags": ["system"], "summary": "CapabilityStatement",
        "operationId": "capabilities", "security": [], "responses": {"200": {"description": "CapabilityStatement"}}}}));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": cs["title"].as_str().unwrap_or("shcr"),
            "version": cs["version"].as_str().unwrap_or(""),
            "description": format!("{} Generated from the CapabilityStatement at /fhir/metadata.", cs["description"].as_str().unwrap_or("")),
        },
        "servers": [{"url": origin}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Resource": {"type": "object", "required": ["resourceType"],
                "properties": {"resourceType": {"type": "string"}}, "additionalProperties": true}},
            "responses": {
                "OperationOutcome": {"description": "An OperationOutcome saying what went wrong",
                    "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/Resource"}}}},
                "Throttled": {"description": "Over the client's rate or concurrency limit; retry after Retry-After seconds",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/Resource"}}}},
            },
        },
    })
}
