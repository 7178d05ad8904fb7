//! Deterministic synthetic UK population, written as FHIR R4 (UK Core) transaction Bundles per
//! contributing trust, with a truth file for evaluating identity matching.
//!
//! Each synthetic person is seen by one to three trusts. Each trust keeps its own Patient with
//! its own local identifier and its own small errors (nicknames, typos, swapped day and month of
//! birth, an old address, a missing or mistyped NHS number), plus clinical content that fits
//! the kind of trust. `truth.csv` says which records belong to the same person.
//!
//! Identifier systems (see `README.txt` written next to the output):
//! - NHS number `https://fhir.nhs.uk/Id/nhs-number` (test range `999…`), ODS
//!   `https://fhir.nhs.uk/Id/ods-organization-code`, GMC/NMC/SDS as in UK Core.
//! - Trust-local: `https://fhir.<ods lower-case>.example.nhs.uk/Id/<what>` where `<what>` is
//!   `local-patient-identifier`, `encounter`, `condition`, `observation`, `medication-request`,
//!   `medication-statement`, `allergy-intolerance`, `document-reference` or `bundle`.
//!
//! Same options and seed give byte-identical output; nothing depends on the clock or on hash
//! iteration order.

mod bundle;
mod clinical;
mod data;
mod dates;
mod people;
mod rng;
mod trusts;

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

pub use trusts::TrustKind;

use crate::identity::nhs_number::NhsNumber;
use bundle::BundleBuilder;
use clinical::RecordContext;
use rng::Dice;
use trusts::Trust;

/// Patient records per bundle by default: with 9–15 resources per record on average (GP
/// records are the smallest) bundles hold roughly 100–300 resources.
pub const DEFAULT_PERSONS_PER_BUNDLE: usize = 14;

/// A patient bundle is closed early rather than grow past this many resources.
pub const MAX_BUNDLE_RESOURCES: usize = 300;

/// NHS numbers come from the `999` test range: 10^6 stems, of which about 1 in 11 is unusable.
pub const MAX_PERSONS: usize = 900_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    pub persons: usize,
    pub trusts: usize,
    pub seed: u64,
    /// Patient records per bundle file, counted per trust. A bundle is closed earlier when the
    /// next record would take it past [`MAX_BUNDLE_RESOURCES`].
    pub persons_per_bundle: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            persons: 1_000,
            trusts: 6,
            seed: 1,
            persons_per_bundle: DEFAULT_PERSONS_PER_BUNDLE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("--trusts must be at least 1")]
    NoTrusts,
    #[error("persons per bundle must be at least 1")]
    EmptyBundles,
    #[error("at most {MAX_PERSONS} persons: the NHS number test range runs out after that")]
    TooManyPersons,
    #[error("output directory {0} is not empty; choose a new directory or empty it first")]
    OutputNotEmpty(PathBuf),
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<(), GenerateError> {
        if self.trusts == 0 {
            return Err(GenerateError::NoTrusts);
        }
        if self.persons_per_bundle == 0 {
            return Err(GenerateError::EmptyBundles);
        }
        if self.persons > MAX_PERSONS {
            return Err(GenerateError::TooManyPersons);
        }
        Ok(())
    }
}

/// One transaction Bundle for one trust.
#[derive(Debug, Clone)]
pub struct GeneratedBundle {
    pub trust_ods: String,
    /// Relative path under the output directory, e.g. `RX1/0001-patients.json`.
    pub file_name: String,
    pub bundle: Value,
    pub resource_count: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerateSummary {
    pub persons: usize,
    pub patient_records: usize,
    pub bundles: usize,
    pub resources: usize,
    pub resources_by_type: BTreeMap<String, usize>,
    pub trusts: Vec<TrustSummary>,
    /// Patient records carrying an NHS number that fails the check digit (flagged in truth.csv).
    pub invalid_nhs_numbers: usize,
    pub missing_nhs_numbers: usize,
    /// Patient records that differ from the person's true details in some way, an unverified
    /// NHS number included.
    pub records_with_variation: usize,
    /// Conditions in sensitive categories (mental health, sexual health, HIV, substance misuse).
    pub sensitive_conditions: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrustSummary {
    pub ods: String,
    pub name: String,
    pub kind: TrustKind,
    pub patient_records: usize,
    pub bundles: usize,
}

/// The population as Bundles, produced lazily: organisation bundles first, then patient bundles
/// as each trust's batch fills. Memory stays bounded by one open batch per trust.
///
/// # Panics
/// If `opts` fails [`GenerateOptions::validate`].
pub fn generate(opts: &GenerateOptions) -> impl Iterator<Item = GeneratedBundle> + use<> {
    Generator::new(opts).map(|batch| batch.bundle)
}

/// Writes `DIR/<ODS>/NNNN-….json`, `DIR/truth.csv`, `DIR/summary.txt` (JSON, named so `shcr import DIR` passes it by) and `DIR/README.txt`.
/// `progress` counts persons. Refuses a non-empty directory so that no stale file from an
/// earlier, larger run is mistaken for part of this one.
pub fn write_to_dir(
    opts: &GenerateOptions,
    out: &Path,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<GenerateSummary> {
    opts.validate()?;
    if out.exists()
        && fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some()
    {
        return Err(GenerateError::OutputNotEmpty(out.to_owned()).into());
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    progress.set_length(opts.persons as u64);

    let generator = Generator::new(opts);
    let mut summary = GenerateSummary {
        persons: opts.persons,
        trusts: generator
            .trusts
            .iter()
            .map(|t| TrustSummary {
                ods: t.ods.clone(),
                name: t.name.clone(),
                kind: t.kind,
                patient_records: 0,
                bundles: 0,
            })
            .collect(),
        ..GenerateSummary::default()
    };
    for t in &generator.trusts {
        fs::create_dir_all(out.join(&t.ods))?;
    }
    let truth_path = out.join("truth.csv");
    let mut truth = std::io::BufWriter::new(
        fs::File::create(&truth_path)
            .with_context(|| format!("creating {}", truth_path.display()))?,
    );
    writeln!(truth, "{TRUTH_HEADER}")?;

    for batch in generator {
        let path = out.join(&batch.bundle.file_name);
        let mut bytes = serde_json::to_vec(&batch.bundle.bundle)?;
        bytes.push(b'\n');
        fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        summary.bytes += bytes.len() as u64;
        summary.bundles += 1;
        summary.resources += batch.bundle.resource_count;
        for entry in batch.bundle.bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let rt = entry["resource"]["resourceType"].as_str().unwrap_or("?");
            *summary.resources_by_type.entry(rt.to_owned()).or_default() += 1;
        }
        if let Some(t) = summary
            .trusts
            .iter_mut()
            .find(|t| t.ods == batch.bundle.trust_ods)
        {
            t.bundles += 1;
            t.patient_records += batch.truth.len();
        }
        summary.sensitive_conditions += batch.sensitive_conditions;
        for row in &batch.truth {
            summary.patient_records += 1;
            summary.invalid_nhs_numbers += usize::from(row.nhs_valid == Some(false));
            summary.missing_nhs_numbers += usize::from(row.recorded_nhs.is_none());
            summary.records_with_variation += usize::from(!row.variations.is_empty());
            writeln!(truth, "{}", row.csv())?;
        }
        progress.set_position(batch.persons_done as u64);
    }
    progress.set_position(opts.persons as u64);
    truth.flush()?;
    let mut json = serde_json::to_vec_pretty(&summary)?;
    json.push(b'\n');
    fs::write(out.join("summary.txt"), json)?;
    fs::write(out.join("README.txt"), readme(opts, &summary))?;
    Ok(summary)
}

const TRUTH_HEADER: &str = "trust_ods,local_patient_id,person_key,true_nhs_number,\
recorded_nhs_number,nhs_number_valid,verification_status,variations,bundle_file";

/// One line of truth.csv: which person a trust's Patient really is.
struct TruthRow {
    trust_ods: String,
    local_id: String,
    person_key: String,
    true_nhs: String,
    recorded_nhs: Option<String>,
    nhs_valid: Option<bool>,
    verification: Option<&'static str>,
    variations: Vec<&'static str>,
    file: String,
}

impl TruthRow {
    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{}",
            self.trust_ods,
            self.local_id,
            self.person_key,
            self.true_nhs,
            self.recorded_nhs.as_deref().unwrap_or(""),
            self.nhs_valid.map(|v| v.to_string()).unwrap_or_default(),
            self.verification.unwrap_or(""),
            if self.variations.is_empty() {
                "none".to_owned()
            } else {
                self.variations.join(";")
            },
            self.file,
        )
    }
}

struct Batch {
    bundle: GeneratedBundle,
    truth: Vec<TruthRow>,
    persons_done: usize,
    sensitive_conditions: usize,
}

#[derive(Default)]
struct TrustBuffer {
    builder: BundleBuilder,
    truth: Vec<TruthRow>,
    records: usize,
    sensitive_conditions: usize,
    files: u32,
    patients_issued: u64,
}

/// Walks the `999` range in a seed-dependent order, skipping stems whose check digit is 10.
struct NhsNumbers {
    start: u64,
    step: u64,
}

impl NhsNumbers {
    /// Odd and not a multiple of 5, so coprime with 10^6: every stem is visited once.
    const STRIDE: u64 = 387_403;

    fn next(&mut self) -> NhsNumber {
        loop {
            let offset = (self.start + self.step * Self::STRIDE) % 1_000_000;
            self.step += 1;
            assert!(self.step <= 1_000_000, "NHS number test range exhausted");
            if let Ok(n) = NhsNumber::from_stem(999_000_000 + offset as u32) {
                return n;
            }
        }
    }
}

struct Generator {
    persons: usize,
    per_bundle: usize,
    seed: u64,
    trusts: Vec<Trust>,
    buffers: Vec<TrustBuffer>,
    ready: VecDeque<Batch>,
    next_person: usize,
    numbers: NhsNumbers,
    flushed: bool,
}

/// Random streams are per person (1..=persons); these sit at the other end of the range.
const STREAM_NHS_NUMBERS: u64 = u64::MAX;
const STREAM_ORGANISATIONS: u64 = u64::MAX - 1;
const TIMESTAMP: &str = "2025-06-30T00:00:00Z";

impl Generator {
    fn new(opts: &GenerateOptions) -> Self {
        if let Err(e) = opts.validate() {
            panic!("invalid generate options: {e}");
        }
        let trusts = trusts::build_trusts(opts.seed, opts.trusts);
        let mut ready = VecDeque::new();
        let mut dice = Dice::new(opts.seed, STREAM_ORGANISATIONS);
        for t in &trusts {
            let b = trusts::organisation_bundle(t, &mut dice);
            let resource_count = b.len();
            ready.push_back(Batch {
                bundle: GeneratedBundle {
                    trust_ods: t.ods.clone(),
                    file_name: format!("{}/0000-organisation.json", t.ods),
                    bundle: b.finish(&t.system("bundle"), &format!("{}-0000", t.ods), TIMESTAMP),
                    resource_count,
                },
                truth: Vec::new(),
                persons_done: 0,
                sensitive_conditions: 0,
            });
        }
        let start = Dice::new(opts.seed, STREAM_NHS_NUMBERS).below(1_000_000);
        Self {
            persons: opts.persons,
            per_bundle: opts.persons_per_bundle,
            seed: opts.seed,
            buffers: trusts.iter().map(|_| TrustBuffer::default()).collect(),
            trusts,
            ready,
            next_person: 0,
            numbers: NhsNumbers { start, step: 0 },
            flushed: false,
        }
    }

    fn add_person(&mut self) {
        let index = self.next_person;
        self.next_person += 1;
        let mut dice = Dice::new(self.seed, index as u64 + 1);
        let nhs = self.numbers.next();
        let person = people::make_person(index, nhs, &self.trusts, &mut dice);
        let gp = person
            .trusts
            .iter()
            .map(|&t| &self.trusts[t])
            .find(|t| t.kind == TrustKind::GpPractice);
        for &t in &person.trusts {
            let trust = &self.trusts[t];
            let buf = &mut self.buffers[t];
            buf.patients_issued += 1;
            let local_id = format!("{}{:07}", trust.mrn_prefix, buf.patients_issued);
            let record = people::record_for(&person, local_id, &mut dice);
            let patient_url = bundle::urn(dice.uuid());
            let patient = people::patient_resource(&record, &person, trust, gp);
            let ctx = RecordContext {
                trust,
                person: &person,
                record: &record,
                patient_url: &patient_url,
            };
            let clinical = clinical::clinical_content(&ctx, &mut dice);
            if !buf.builder.is_empty()
                && buf.builder.len() + 1 + clinical.resources.len() > MAX_BUNDLE_RESOURCES
            {
                flush(trust, buf, &mut self.ready, index);
            }
            buf.builder.add(
                &patient_url,
                patient,
                &trust.system("local-patient-identifier"),
                &record.local_id,
            );
            for p in clinical.resources {
                buf.builder.add(&p.url, p.resource, &p.system, &p.value);
            }
            buf.sensitive_conditions += clinical.sensitive_conditions;
            buf.truth.push(TruthRow {
                trust_ods: trust.ods.clone(),
                local_id: record.local_id.clone(),
                person_key: person.key.clone(),
                true_nhs: person.nhs.as_str().to_owned(),
                recorded_nhs: record.nhs.clone(),
                nhs_valid: record.nhs_valid,
                verification: record.verification.map(|v| v.0),
                variations: record.variations.clone(),
                file: String::new(),
            });
            buf.records += 1;
            if buf.records == self.per_bundle {
                flush(trust, buf, &mut self.ready, index + 1);
            }
        }
    }
}

fn flush(trust: &Trust, buf: &mut TrustBuffer, ready: &mut VecDeque<Batch>, persons_done: usize) {
    buf.files += 1;
    let file_name = format!("{}/{:04}-patients.json", trust.ods, buf.files);
    let builder = std::mem::take(&mut buf.builder);
    let resource_count = builder.len();
    debug_assert!(resource_count <= MAX_BUNDLE_RESOURCES);
    let mut truth = std::mem::take(&mut buf.truth);
    for row in &mut truth {
        row.file.clone_from(&file_name);
    }
    ready.push_back(Batch {
        bundle: GeneratedBundle {
            trust_ods: trust.ods.clone(),
            bundle: builder.finish(
                &trust.system("bundle"),
                &format!("{}-{:04}", trust.ods, buf.files),
                TIMESTAMP,
            ),
            file_name,
            resource_count,
        },
        truth,
        persons_done,
        sensitive_conditions: std::mem::take(&mut buf.sensitive_conditions),
    });
    buf.records = 0;
}

impl Iterator for Generator {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Some(batch);
            }
            if self.next_person < self.persons {
                self.add_person();
                continue;
            }
            if self.flushed {
                return None;
            }
            self.flushed = true;
            for (trust, buf) in self.trusts.iter().zip(&mut self.buffers) {
                if !buf.builder.is_empty() {
                    flush(trust, buf, &mut self.ready, self.persons);
                }
            }
        }
    }
}

fn readme(opts: &GenerateOptions, s: &GenerateSummary) -> String {
    let mut trusts = String::new();
    for t in &s.trusts {
        trusts.push_str(&format!(
            "  {:<7} {:<14} {:>7} patient records  {}\n",
            t.ods,
            t.kind.code(),
            t.patient_records,
            t.name
        ));
    }
    let mut types = String::new();
    for (rt, n) in &s.resources_by_type {
        types.push_str(&format!("  {rt:<20} {n:>9}\n"));
    }
    format!(
        r#"Synthetic population for shcr (FHIR R4, UK Core). NOT REAL PEOPLE.

Generated with: --persons {persons} --trusts {ntrusts} --seed {seed} (persons per bundle {ppb}).
The same options always produce byte-identical files.

Layout
- <ODS>/0000-organisation.json: the trust's Organization, Practitioners and PractitionerRoles.
  Load it before the trust's other bundles: they point at these with conditional references
  such as Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|<ODS> and
  Practitioner?identifier=https://fhir.hl7.org.uk/Id/gmc-number|<GMC number>.
- <ODS>/NNNN-patients.json: transaction Bundles of up to {ppb} patient records and at most {max}
  resources, each Patient with its Encounters, Conditions, Observations, MedicationRequests,
  MedicationStatements, AllergyIntolerances and DocumentReferences. Every entry is a POST with
  ifNoneExist on the resource's own business identifier, so loading a file again converges.
- truth.csv: one row per Patient, saying which synthetic person it is and how it differs.
- summary.txt: the counts below, machine-readable (JSON; not named .json so that
  `shcr import` of this folder reads only FHIR).

Identifier systems
- NHS number: https://fhir.nhs.uk/Id/nhs-number, all in the 999 test range, with the UK Core
  NHSNumberVerificationStatus extension (01 mostly, some 02 and 03).
- Per trust: https://fhir.<ods lower-case>.example.nhs.uk/Id/<what>, <what> being one of
  local-patient-identifier, encounter, condition, observation, medication-request,
  medication-statement, allergy-intolerance, document-reference, bundle.
- Organisations: https://fhir.nhs.uk/Id/ods-organization-code.
- Clinicians: https://fhir.hl7.org.uk/Id/gmc-number or .../nmc-number, plus
  https://fhir.nhs.uk/Id/sds-user-id; PractitionerRole: https://fhir.nhs.uk/Id/sds-role-profile-id.

truth.csv columns
- trust_ods, local_patient_id: the Patient (identifier system as above).
- person_key: the synthetic person; records with the same key are the same person.
- true_nhs_number: the person's NHS number; recorded_nhs_number: what the trust holds (empty
  if missing); nhs_number_valid: false for deliberately mistyped numbers that fail the
  modulus-11 check, empty when missing; verification_status: the extension's code.
- variations: ';'-separated, or none. nickname, given-name-typo, family-name-typo,
  family-name-changed, middle-name-missing, birth-date-day-month-swapped, previous-address,
  gender-unknown, nhs-number-missing, nhs-number-invalid, nhs-number-unverified.
- bundle_file: the file holding the Patient.

Dates run up to {today}. Phone numbers are in Ofcom's drama ranges; postcode districts are
real, sectors and units synthetic; organisations and their ODS codes are invented.
Sensitive content (mental health, sexual health, HIV, substance misuse) is present but not
labelled: labelling is the shared care record's job.

Counts
persons {persons}, patient records {records}, bundles {bundles}, resources {resources}
records differing from the truth {variation}, invalid NHS numbers {invalid},
missing NHS numbers {missing}, sensitive conditions {sensitive}

Trusts
{trusts}
Resources
{types}"#,
        persons = opts.persons,
        ntrusts = opts.trusts,
        seed = opts.seed,
        ppb = opts.persons_per_bundle,
        max = MAX_BUNDLE_RESOURCES,
        today = dates::fhir_date(dates::TODAY),
        records = s.patient_records,
        bundles = s.bundles,
        resources = s.resources,
        variation = s.records_with_variation,
        invalid = s.invalid_nhs_numbers,
        missing = s.missing_nhs_numbers,
        sensitive = s.sensitive_conditions,
    )
}

#[cfg(test)]
mod tests;

/// One trust's Patient record and the person it really is: what identity benchmarks link and
/// score against.
#[derive(Debug, Clone)]
pub struct PatientSample {
    pub trust_ods: String,
    /// The true person (`truth.csv`'s `person_key`).
    pub person_key: String,
    /// The Patient, with `managingOrganization` as an ODS identifier (no Organization needed).
    pub patient: Value,
}

/// Only the Patient records of a population, without clinical content: the same people, trusts
/// and kinds of demographic variation as [`generate`] (not byte-identical records, since the
/// random streams are not spent on clinical content). Lazily, one person at a time.
pub fn patient_samples(opts: &GenerateOptions) -> impl Iterator<Item = PatientSample> + use<> {
    if let Err(e) = opts.validate() {
        panic!("invalid generate options: {e}");
    }
    let trusts = trusts::build_trusts(opts.seed, opts.trusts);
    let mut numbers = NhsNumbers {
        start: Dice::new(opts.seed, STREAM_NHS_NUMBERS).below(1_000_000),
        step: 0,
    };
    let mut issued = vec![0u64; trusts.len()];
    let seed = opts.seed;
    (0..opts.persons).flat_map(move |index| {
        let mut dice = Dice::new(seed, index as u64 + 1);
        let person = people::make_person(index, numbers.next(), &trusts, &mut dice);
        let mut out = Vec::with_capacity(person.trusts.len());
        for &t in &person.trusts {
            let trust = &trusts[t];
            issued[t] += 1;
            let local_id = format!("{}{:07}", trust.mrn_prefix, issued[t]);
            let record = people::record_for(&person, local_id, &mut dice);
            let mut patient = people::patient_resource(&record, &person, trust, None);
            patient["managingOrganization"] = trust.identifier_reference();
            out.push(PatientSample {
                trust_ods: trust.ods.clone(),
                person_key: person.key.clone(),
                patient,
            });
        }
        out
    })
}
