//! The policy files in `consent-policies/`: the casbin model and role policies, the sensitivity
//! mapping and the access settings. Loaded and validated at start-up; `AccessPolicy::reload`
//! swaps in a new set only when every file is valid, so a broken edit never leaves the server
//! without a policy.
//!
//! casbin evaluates its matcher (a rhai script) once per policy row, so a decision is asked once
//! per caller profile, object and action and cached for the life of the loaded set; requests
//! never call the enforcer per search hit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use serde::Deserialize;

use super::labels::{LabelCell, Sensitivity};

pub const BUILTIN_MODEL: &str = include_str!("../../consent-policies/model.conf");
pub const BUILTIN_POLICY: &str = include_str!("../../consent-policies/policy.csv");
pub const BUILTIN_SENSITIVITY: &str = include_str!("../../consent-policies/sensitivity.toml");
pub const BUILTIN_SETTINGS: &str = include_str!("../../consent-policies/access.toml");

/// Actions a policy row may name.
pub const ACTIONS: [&str; 6] = ["read", "search", "write", "view", "use", "*"];
/// Functions (objects that are not resource types or labels).
pub const FUNCTIONS: [&str; 4] = ["ig:audit", "ig:review", "admin:policy", "break-glass"];

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

fn err(file: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.to_string(),
        message: message.into(),
    }
}

/// `access.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSettings {
    pub relationship_window_days: u32,
    pub break_glass_minutes: u32,
    pub break_glass_overrides_opt_out: bool,
    pub gated_confidentiality: Vec<String>,
    pub out_of_hours_start: u8,
    pub out_of_hours_end: u8,
    pub unusual_volume_per_day: u32,
}

impl AccessSettings {
    fn parse(text: &str) -> Result<AccessSettings, PolicyError> {
        let s: AccessSettings =
            toml::from_str(text).map_err(|e| err("access.toml", e.to_string()))?;
        if s.relationship_window_days == 0 || s.relationship_window_days > 3650 {
            return Err(err(
                "access.toml",
                "relationship_window_days must be between 1 and 3650",
            ));
        }
        if s.break_glass_minutes == 0 || s.break_glass_minutes > 24 * 60 {
            return Err(err(
                "access.toml",
                "break_glass_minutes must be between 1 and 1440 (a day)",
            ));
        }
        if let Some(c) = s
            .gated_confidentiality
            .iter()
            .find(|c| !["U", "L", "M", "N", "R", "V"].contains(&c.as_str()))
        {
            return Err(err(
                "access.toml",
                format!("gated_confidentiality '{c}' is not a v3-Confidentiality code"),
            ));
        }
        if s.out_of_hours_start > 23 || s.out_of_hours_end > 23 {
            return Err(err("access.toml", "out-of-hours bounds are hours 0 to 23"));
        }
        Ok(s)
    }
}

/// The text of the four files, read together so a reload sees one consistent set.
pub struct PolicyFiles {
    pub source: String,
    pub model: String,
    pub policy: String,
    pub sensitivity: String,
    pub settings: String,
}

impl PolicyFiles {
    pub fn builtin() -> PolicyFiles {
        PolicyFiles {
            source: "built-in consent-policies".into(),
            model: BUILTIN_MODEL.into(),
            policy: BUILTIN_POLICY.into(),
            sensitivity: BUILTIN_SENSITIVITY.into(),
            settings: BUILTIN_SETTINGS.into(),
        }
    }

    pub fn read(dir: &Path) -> Result<PolicyFiles, PolicyError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                err(
                    name,
                    format!("cannot read {}: {e}", dir.join(name).display()),
                )
            })
        };
        Ok(PolicyFiles {
            source: dir.display().to_string(),
            model: read("model.conf")?,
            policy: read("policy.csv")?,
            sensitivity: read("sensitivity.toml")?,
            settings: read("access.toml")?,
        })
    }
}

/// Who asks, as casbin sees it: the caller's base subjects (job role and activities, or
/// `system`) under one profile name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Profile {
    pub name: String,
    pub subjects: Vec<String>,
}

impl Profile {
    pub fn new(mut subjects: Vec<String>) -> Profile {
        subjects.sort();
        subjects.dedup();
        Profile {
            name: format!("profile:{}", subjects.join("+")),
            subjects,
        }
    }
}

/// One loaded, validated set of policy files.
pub struct PolicySet {
    enforcer: Enforcer,
    linked: Mutex<HashSet<String>>,
    decisions: Mutex<HashMap<(String, String, String), bool>>,
    pub sensitivity: Arc<Sensitivity>,
    pub settings: AccessSettings,
    /// Labels that restrict visibility: every sensitivity label plus the gated confidentiality
    /// codes.
    pub gated: BTreeSet<String>,
    pub source: String,
}

impl PolicySet {
    pub async fn load(files: PolicyFiles) -> Result<PolicySet, PolicyError> {
        let settings = AccessSettings::parse(&files.settings)?;
        let sensitivity =
            Sensitivity::parse(&files.sensitivity).map_err(|m| err("sensitivity.toml", m))?;
        let mut gated: BTreeSet<String> = sensitivity.label_codes().map(str::to_string).collect();
        gated.extend(settings.gated_confidentiality.iter().cloned());
        if files
            .model
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("regexMatch"))
        {
            return Err(err(
                "model.conf",
                "regexMatch is not allowed (it compiles on every call and panics on a bad pattern); use keyMatch",
            ));
        }
        let policy = check_policy_rows(&files.policy, &gated)?;
        let model = DefaultModel::from_str(&files.model)
            .await
            .map_err(|e| err("model.conf", e.to_string()))?;
        let enforcer = Enforcer::new(model, StringAdapter::new(policy))
            .await
            .map_err(|e| err("policy.csv", e.to_string()))?;
        // A matcher that fails at run time (a typo in a function name) shows up now, not on
        // the first clinical request.
        enforcer
            .enforce(("profile:check", "Patient", "read"))
            .map_err(|e| err("model.conf", format!("the matcher does not evaluate: {e}")))?;
        Ok(PolicySet {
            enforcer,
            linked: Mutex::new(HashSet::new()),
            decisions: Mutex::new(HashMap::new()),
            sensitivity: Arc::new(sensitivity),
            settings,
            gated,
            source: files.source,
        })
    }

    /// Whether `profile` may `act` on `obj`. Errors deny (fail closed).
    pub fn allows(&self, profile: &Profile, obj: &str, act: &str) -> bool {
        let key = (profile.name.clone(), obj.to_string(), act.to_string());
        if let Some(d) = self.decisions.lock().expect("decisions").get(&key) {
            return *d;
        }
        {
            let mut linked = self.linked.lock().expect("linked");
            if linked.insert(profile.name.clone()) {
                let rm = self.enforcer.get_role_manager();
                let mut rm = rm.write();
                for s in &profile.subjects {
                    rm.add_link(&profile.name, s, None);
                }
            }
        }
        let decision = match self.enforcer.enforce((profile.name.as_str(), obj, act)) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, obj, act, "policy evaluation failed; denying");
                false
            }
        };
        self.decisions
            .lock()
            .expect("decisions")
            .insert(key, decision);
        decision
    }
}

/// Checks every row of policy.csv and returns it without comments, as casbin loads it.
fn check_policy_rows(text: &str, gated: &BTreeSet<String>) -> Result<String, PolicyError> {
    let mut out = String::new();
    let mut rows = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |m: String| err("policy.csv", format!("line {}: {m}", n + 1));
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.iter().any(|c| c.is_empty()) {
            return Err(bad("an empty cell".into()));
        }
        match cells[0] {
            "p" => {
                let [_, _sub, obj, act, eft] = cells[..] else {
                    return Err(bad(format!(
                        "a p row has 5 cells (p, group, object, action, allow|deny); found {}",
                        cells.len()
                    )));
                };
                let object_ok = obj == "*"
                    || crate::validation::is_resource_type(obj)
                    || FUNCTIONS.contains(&obj)
                    || obj
                        .strip_prefix("label:")
                        .is_some_and(|l| l == "*" || gated.contains(l));
                if !object_ok {
                    return Err(bad(format!(
                        "unknown object '{obj}': use a FHIR resource type, *, label:<gated label>, or one of {}",
                        FUNCTIONS.join(", ")
                    )));
                }
                if !ACTIONS.contains(&act) {
                    return Err(bad(format!(
                        "unknown action '{act}' (one of {})",
                        ACTIONS.join(", ")
                    )));
                }
                if eft != "allow" && eft != "deny" {
                    return Err(bad(format!("effect '{eft}' is neither allow nor deny")));
                }
            }
            "g" => {
                if cells.len() != 3 {
                    return Err(bad(format!(
                        "a g row has 3 cells (g, role-or-activity, group); found {}",
                        cells.len()
                    )));
                }
            }
            other => return Err(bad(format!("rows start with p or g, not '{other}'"))),
        }
        rows += 1;
        out.push_str(&cells.join(", "));
        out.push('\n');
    }
    if rows == 0 {
        return Err(err(
            "policy.csv",
            "no policy rows: refusing to deny everything",
        ));
    }
    Ok(out)
}

/// The live policy: the current set, swapped whole on reload.
pub struct AccessPolicy {
    current: RwLock<Arc<PolicySet>>,
    dir: Option<PathBuf>,
    labels: Arc<LabelCell>,
    /// False only for benchmarks measuring the cost of enforcement (`access.enforce`).
    pub enforce: bool,
    /// Organisation-wide facts for searches.
    pub org_grants: super::org_grants::OrgGrantsCache,
}

impl AccessPolicy {
    /// Loads the files in `dir`, or the built-in set when `None`.
    pub async fn load(dir: Option<&Path>, enforce: bool) -> Result<AccessPolicy, PolicyError> {
        let files = match dir {
            Some(d) => PolicyFiles::read(d)?,
            None => PolicyFiles::builtin(),
        };
        let set = Arc::new(PolicySet::load(files).await?);
        Ok(AccessPolicy {
            labels: LabelCell::new(set.sensitivity.clone()),
            current: RwLock::new(set),
            dir: dir.map(Path::to_path_buf),
            enforce,
            org_grants: Default::default(),
        })
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current.read().expect("policy").clone()
    }

    /// The sensitivity mapping every write door labels with.
    pub fn labels(&self) -> Arc<LabelCell> {
        self.labels.clone()
    }

    /// Re-reads the files; on any error the old policy stays and the error says why.
    pub async fn reload(&self) -> Result<Arc<PolicySet>, PolicyError> {
        let files = match &self.dir {
            Some(d) => PolicyFiles::read(d)?,
            None => PolicyFiles::builtin(),
        };
        let set = Arc::new(PolicySet::load(files).await?);
        self.labels.set(set.sensitivity.clone());
        *self.current.write().expect("policy") = set.clone();
        tracing::info!(source = %set.source, "access policy reloaded");
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: &str, activities: &[&str]) -> Profile {
        let mut s = vec![role.to_string()];
        s.extend(activities.iter().map(|a| a.to_string()));
        Profile::new(s)
    }

    #[tokio::test]
    async fn builtin_policy_loads_and_decides() {
        let p = PolicySet::load(PolicyFiles::builtin()).await.unwrap();
        let doctor = user("R8000", &["B0360", "B0380"]);
        assert!(p.allows(&doctor, "Observation", "read"));
        assert!(p.allows(&doctor, "label:R", "view"));
        assert!(!p.allows(&doctor, "label:HIV", "view"));
        let sensitive = user("R8000", &["B0360", "B1611"]);
        assert!(p.allows(&sensitive, "label:HIV", "view"));
        let ig = user("R0001", &["B0360"]);
        assert!(!p.allows(&ig, "Observation", "read"), "deny wins");
        assert!(p.allows(&ig, "ig:audit", "use"));
        let student = user("R8004", &["B0360", "B1611"]);
        assert!(p.allows(&student, "Observation", "search"));
        assert!(!p.allows(&student, "label:HIV", "view"));
        assert!(!p.allows(&student, "break-glass", "use"));
        let system = Profile::new(vec!["system".into()]);
        assert!(p.allows(&system, "Observation", "write"));
        assert!(!p.allows(&system, "ig:audit", "use"));
    }

    #[tokio::test]
    async fn broken_rows_are_refused_with_the_line() {
        let mut files = PolicyFiles::builtin();
        files
            .policy
            .push_str("\np, clinician, Observaton, read, allow\n");
        let e = PolicySet::load(files).await.err().unwrap().to_string();
        assert!(e.contains("policy.csv") && e.contains("Observaton"), "{e}");
        let mut files = PolicyFiles::builtin();
        files.model = files.model.replace("keyMatch", "regexMatch");
        assert!(PolicySet::load(files).await.is_err());
    }
}
