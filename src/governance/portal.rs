//! The developer portal (`/docs`): one self-contained HTML page generated from the
//! CapabilityStatement, the profiles, the API product file and the event catalogue — the same
//! sources the server runs on, so the page cannot promise what the server does not do.

use std::fmt::Write;

use serde_json::Value;

use super::product::Product;
use crate::events::catalogue::Catalogue;
use crate::validation::profiles::Profiles;

/// Tokens for the example requests: shown only when the development issuer is on.
pub struct DemoTokens {
    pub trust: String,
    pub clinician: String,
    pub admin: String,
}

pub struct PortalInput<'a> {
    pub origin: &'a str,
    pub capabilities: &'a Value,
    pub catalogue: &'a Catalogue,
    pub product: &'a Product,
    pub profiles: &'a Profiles,
    pub demo: Option<DemoTokens>,
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#212b32}\
h1{color:#005eb8}h2{border-bottom:2px solid #005eb8;padding-bottom:.2rem;margin-top:2.5rem}\
table{border-collapse:collapse;width:100%;margin:.5rem 0}td,th{border:1px solid #d8dde0;padding:.3rem .5rem;text-align:left;vertical-align:top}\
th{background:#f0f4f5}code,pre{background:#f0f4f5;padding:.1rem .3rem}pre{padding:.6rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}\
.deprecated{color:#d5281b;font-weight:bold}nav a{margin-right:1rem}";

const USAGE_SCRIPT: &str = r#"<script>
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
document.getElementById('usage-form').addEventListener('submit', async e => {
  e.preventDefault();
  const out = document.getElementById('usage-summary');
  const r = await fetch('/admin/usage', {headers: {Authorization: 'Bearer ' + document.getElementById('usage-token').value}});
  if (!r.ok) { out.textContent = 'HTTP ' + r.status; return; }
  const u = await r.json();
  let h = '<table><tr><th>Client</th><th>Requests</th><th>Errors</th><th>Throttled</th><th>Freshness (mean s)</th><th>Interactions</th></tr>';
  for (const c of u.clients) {
    const i = Object.entries(c.interactions).map(([k, v]) => esc(k) + ': ' + v.requests + ' (' + v.meanLatencyMs + ' ms)').join(', ');
    h += '<tr><td>' + esc(c.client) + '</td><td>' + c.requests + '</td><td>' + c.errors + '</td><td>' + c.throttled +
         '</td><td>' + (c.freshness ? c.freshness.meanSeconds : '') + '</td><td>' + i + '</td></tr>';
  }
  out.innerHTML = h + '</table>';
});
</script>"#;

fn rows<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v[key].as_array().into_iter().flatten()
}

pub fn render(input: &PortalInput) -> String {
    let cs = input.capabilities;
    let base = format!("{}/fhir", input.origin);
    let mut h = String::with_capacity(256 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>shcr developer portal</title>\
         <style>{STYLE}</style></head><body><h1 id=\"top\">shcr developer portal</h1>\
         <p>shcr is a regional shared care record: a FHIR R4 (UK Core) API for contributing trusts \
         and clinician portals. FHIR base: <code>{}</code>. Version {} ({}).</p>\
         <nav><a href=\"#onboarding\">Onboarding</a><a href=\"#versioning\">Versioning</a>\
         <a href=\"#lifecycle\">Lifecycle</a><a href=\"#throttling\">Throttling</a>\
         <a href=\"#resources\">Resources</a><a href=\"#operations\">Operations</a>\
         <a href=\"#profiles\">Profiles</a><a href=\"#events\">Events</a><a href=\"#examples\">Examples</a>\
         <a href=\"/docs/openapi.json\">OpenAPI</a><a href=\"/fhir/metadata\">CapabilityStatement</a></nav>",
        escape(&base),
        escape(cs["version"].as_str().unwrap_or("")),
        escape(cs["date"].as_str().unwrap_or("")),
    );
    let _ = write!(
        h,
        "<p id=\"changes\"><strong>What changed:</strong> {}</p>",
        escape(cs["description"].as_str().unwrap_or(""))
    );

    h.push_str(
        "<h2 id=\"onboarding\">Onboarding and access</h2>\
         <p>Every caller is a registered client with an owner, an ODS code and an access mode. \
         An unregistered client gets <code>401</code>, a suspended one <code>403</code>, each with \
         an OperationOutcome saying why.</p><table><tr><th>Access mode</th><th>Who</th><th>Token</th></tr>\
         <tr><td>application-restricted</td><td>a trust's system, no end user</td><td>client credentials; claims \
         <code>client_id</code> and <code>ods_code</code> (must match the registry)</td></tr>\
         <tr><td>user-restricted</td><td>a portal acting for a person (CIS2)</td><td><code>azp</code> = the portal's \
         client id, <code>sub</code>, <code>selected_roleid</code>, <code>nhsid_nrbac_roles</code></td></tr></table>\
         <p>The registry records what each client may do (interactions, scopes), which subscription topics and \
         payload levels it may use, and its rate and concurrency limits. The API product team manages it with \
         <code>shcr clients add|list|show|update|suspend|reinstate</code> or the admin API \
         (<code>/admin/clients</code>, scope <code>shcr.admin</code>); every change is kept with who made it.</p>",
    );

    h.push_str(
        "<h2 id=\"versioning\">Versions</h2><p>shcr serves FHIR R4 (<code>4.0.1</code>). Name the version with \
         the <code>fhirVersion</code> media-type parameter, e.g. <code>Accept: application/fhir+json; fhirVersion=4.0</code>; \
         <code>4.0</code> and <code>4.0.1</code> are accepted, any other version is refused with <code>406</code> \
         (Accept, _format) or <code>415</code> (Content-Type).</p>",
    );

    h.push_str("<h2 id=\"lifecycle\">Lifecycle of shcr's own features</h2><p>Using a deprecated feature answers \
        with <code>Deprecation</code> and <code>Sunset</code> headers, a <code>Warning</code> header and a warning issue \
        in the OperationOutcome or search Bundle. After its sunset a feature is retired.</p>\
        <table><tr><th>Feature</th><th>Kind</th><th>Status</th><th>Since</th><th>Deprecated</th><th>Sunset</th><th>Use instead</th><th>Notes</th></tr>");
    for f in &input.product.lifecycle {
        let class = if f.status.code() == "active" {
            ""
        } else {
            " class=\"deprecated\""
        };
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{:?}</td><td{class}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.name),
            f.kind,
            f.status.code(),
            escape(&f.since),
            escape(f.deprecated.as_deref().unwrap_or("")),
            escape(f.sunset.as_deref().unwrap_or("")),
            escape(f.replacement.as_deref().unwrap_or("")),
            escape(&f.summary),
        );
    }
    h.push_str("</table>");

    let c = &input.product.costs;
    let _ = write!(
        h,
        "<h2 id=\"throttling\">Throttling</h2><p>Each client has a token bucket (rate per second, burst) and a \
         limit on requests in flight. Over either, shcr answers <code>429</code> with <code>Retry-After</code> \
         before any work starts, so a write that was acknowledged is never dropped. Costs per request:</p>\
         <table><tr><th>Request</th><th>Tokens</th></tr>\
         <tr><td>any request</td><td>{}</td></tr><tr><td>create, update, delete</td><td>+{}</td></tr>\
         <tr><td>search</td><td>+{}</td></tr><tr><td>each _include / _revinclude</td><td>+{}</td></tr>\
         <tr><td>each 100 of <code>_count</code> beyond 100</td><td>+{}</td></tr>\
         <tr><td>transaction, $process-message, $validate: per 16 KiB of body</td><td>+{}</td></tr>\
         <tr><td>history of a type or the system</td><td>+{}</td></tr><tr><td>$everything</td><td>+{}</td></tr></table>",
        c.base,
        c.write,
        c.search,
        c.include,
        c.per_100_results,
        c.body_per_16_kib,
        c.history,
        c.everything
    );

    h.push_str(
        "<h2 id=\"resources\">Resources and search parameters</h2><table><tr><th>Resource</th>\
        <th>Interactions</th><th>Profiles</th><th>Search parameters</th></tr>",
    );
    for rest in rows(cs, "rest") {
        for r in rows(rest, "resource") {
            let t = r["type"].as_str().unwrap_or_default();
            let interactions: Vec<&str> = rows(r, "interaction")
                .filter_map(|i| i["code"].as_str())
                .collect();
            let profiles: Vec<String> = rows(r, "supportedProfile")
                .filter_map(Value::as_str)
                .map(|p| format!("<code>{}</code>", escape(p.rsplit('/').next().unwrap_or(p))))
                .collect();
            let params: Vec<String> = rows(r, "searchParam")
                .map(|p| {
                    format!(
                        "<code title=\"{}\">{}</code>",
                        escape(p["type"].as_str().unwrap_or("")),
                        escape(p["name"].as_str().unwrap_or(""))
                    )
                })
                .collect();
            let _ = write!(
                h,
                "<tr id=\"resource-{t}\"><td>{t}</td><td>{}</td><td>{}</td><td><details><summary>{} parameters</summary>{}</details></td></tr>",
                interactions.join(", "),
                profiles.join(" "),
                params.len(),
                params.join(" ")
            );
        }
    }
    h.push_str("</table>");

    h.push_str("<h2 id=\"operations\">Operations</h2><table><tr><th>Operation</th><th>Definition</th></tr>");
    for rest in rows(cs, "rest") {
        for op in rows(rest, "operation") {
            let _ = write!(
                h,
                "<tr><td><code>${}</code></td><td>{}</td></tr>",
                escape(op["name"].as_str().unwrap_or("")),
                escape(op["definition"].as_str().unwrap_or(""))
            );
        }
        let system: Vec<&str> = rows(rest, "interaction")
            .filter_map(|i| i["code"].as_str())
            .collect();
        let _ = write!(
            h,
            "<tr><td>system interactions</td><td>{}</td></tr>",
            system.join(", ")
        );
    }
    h.push_str("</table><p>Sandbox: send <code>X-Shcr-Sandbox: true</code> with any write (create, update, delete, \
        transaction, batch) to run it through validation and the transaction logic and roll it back; the response \
        is what a real write would answer, marked with the same header, and nothing is stored.</p>");

    h.push_str("<h2 id=\"profiles\">Profiles</h2><p>Validate before you send: \
        <code>POST /fhir/{type}/$validate?profile={canonical}</code> returns an OperationOutcome with every issue \
        and its FHIRPath location.</p><table><tr><th>Profile</th><th>Type</th><th>Publisher</th><th>Description</th></tr>");
    for p in input.profiles.all() {
        let _ = write!(
            h,
            "<tr><td><a href=\"/profiles/{}\">{}</a><br><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.id),
            escape(&p.title),
            escape(&p.url),
            escape(&p.resource_type),
            escape(&p.publisher),
            escape(&p.description)
        );
    }
    h.push_str("</table>");

    h.push_str("<h2 id=\"events\">Events and subscription topics</h2><table><tr><th>Event code</th><th>Class</th>\
        <th>Display</th><th>Resources</th><th>Topics</th></tr>");
    for e in input.catalogue.events() {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.code),
            format!("{:?}", e.class).to_lowercase(),
            escape(&e.display),
            escape(&e.resources.join(", ")),
            escape(&e.topics.join(", "))
        );
    }
    h.push_str("</table><table><tr><th>Topic</th><th>Canonical</th><th>Description</th></tr>");
    for t in input.catalogue.topics() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            escape(&t.title),
            escape(&t.url),
            escape(&t.description)
        );
    }
    h.push_str("</table>");

    h.push_str("<h2 id=\"examples\">Example requests</h2>");
    let (trust, clinician, admin) = match &input.demo {
        Some(d) => (d.trust.as_str(), d.clinician.as_str(), d.admin.as_str()),
        None => ("$TRUST_TOKEN", "$CLINICIAN_TOKEN", "$ADMIN_TOKEN"),
    };
    if input.demo.is_some() {
        h.push_str("<p class=\"deprecated\">Development mode: the tokens below are real demo tokens from the \
            development issuer (valid for an hour). Production never shows tokens.</p>");
    } else {
        h.push_str("<p>Use your client's own tokens.</p>");
    }
    let examples = [
        (
            "Search patients (clinician portal)",
            format!(
                "curl -H 'Authorization: Bearer {clinician}' '{base}/Patient?name=smith&_count=10'"
            ),
        ),
        (
            "Create a patient (trust system)",
            format!(
                "curl -X POST -H 'Authorization: Bearer {trust}' -H 'Content-Type: application/fhir+json' --data @patient.json '{base}/Patient'"
            ),
        ),
        (
            "Validate against UK Core",
            format!(
                "curl -X POST -H 'Authorization: Bearer {trust}' -H 'Content-Type: application/fhir+json' --data @patient.json '{base}/Patient/$validate?profile=https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient'"
            ),
        ),
        (
            "Trial run a transaction (nothing stored)",
            format!(
                "curl -X POST -H 'Authorization: Bearer {trust}' -H 'X-Shcr-Sandbox: true' -H 'Content-Type: application/fhir+json' --data @bundle.json '{base}'"
            ),
        ),
        (
            "Usage per client (admin)",
            format!(
                "curl -H 'Authorization: Bearer {admin}' '{}/admin/usage'",
                input.origin
            ),
        ),
    ];
    for (title, cmd) in examples {
        let _ = write!(h, "<h3>{}</h3><pre>{}</pre>", escape(title), escape(&cmd));
    }
    h.push_str("<h2 id=\"usage\">Usage</h2><p>Per-client request counts, latency, error classes, throttled requests \
        and data freshness: <code>GET /admin/usage</code> (JSON, scope <code>shcr.admin</code>) and the \
        <code>shcr_api_*</code> and <code>shcr_data_freshness_seconds</code> series on <code>/metrics</code>.</p>");
    // The summary is fetched with the reader's own admin token: the page itself stays open
    // and never carries usage data.
    let prefill = input
        .demo
        .as_ref()
        .map(|d| escape(&d.admin))
        .unwrap_or_default();
    let _ = write!(
        h,
        "<form id=\"usage-form\"><label>Admin token <input id=\"usage-token\" type=\"password\" value=\"{prefill}\"></label> \
         <button type=\"submit\">Show usage</button></form><div id=\"usage-summary\"></div>{USAGE_SCRIPT}</body></html>"
    );
    h
}
