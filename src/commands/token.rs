//! `shcr token`: mint a development token from the dev issuer's key.

use crate::access::dev_issuer::{DevIssuer, Grant, TokenClaims};
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// National RBAC role code for a person, e.g. R8000 (clinical practitioner) or
    /// S8000:G8000:R8000; omit with --trust for a system token.
    #[arg(long)]
    pub role: Option<String>,
    /// ODS code of the user's organisation (with --role).
    #[arg(long)]
    pub org: Option<String>,
    /// User id (CIS2 UUID) for a person token.
    #[arg(long, default_value = "555000000001")]
    pub user: String,
    /// Display name for a person token.
    #[arg(long)]
    pub name: Option<String>,
    /// Activity codes of the role, comma-separated (e.g. B0360,B0380).
    #[arg(long, value_delimiter = ',', default_value = "B0360,B0380")]
    pub activities: Vec<String>,
    /// ODS code of a trust: mints an application-restricted (system) token for it.
    #[arg(long, conflicts_with = "role")]
    pub trust: Option<String>,
    /// Client id of the trust's system (with --trust); defaults to `<ods>-system`.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Extra scopes, comma-separated (e.g. shcr.admin for the admin API).
    #[arg(long, value_delimiter = ',')]
    pub scope: Vec<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
    /// Issuer URL the server expects (defaults to the dev issuer of http://host:port).
    #[arg(long)]
    pub issuer: Option<String>,
}

pub fn grant_from(args: &TokenArgs) -> anyhow::Result<Grant> {
    if let Some(ods) = &args.trust {
        return Ok(Grant::System {
            client_id: args
                .client_id
                .clone()
                .unwrap_or_else(|| format!("{}-system", ods.to_ascii_lowercase())),
            ods_code: ods.to_ascii_uppercase(),
            scopes: [vec!["system/*.cruds".to_string()], args.scope.clone()].concat(),
        });
    }
    let (Some(role), Some(org)) = (&args.role, &args.org) else {
        anyhow::bail!("give --role and --org for a person, or --trust ODS for a trust's system");
    };
    let role_code = if role.contains(':') {
        role.clone()
    } else {
        // Bare job roles get the staff/job group of the clinical practitioner family.
        format!("S8000:G8000:{role}")
    };
    Ok(Grant::User {
        user_id: args.user.clone(),
        name: args.name.clone(),
        role_code,
        org: org.to_ascii_uppercase(),
        activities: args.activities.clone(),
        scopes: [vec!["user/*.rs".to_string()], args.scope.clone()].concat(),
    })
}

pub fn run(settings: &Settings, args: &TokenArgs) -> anyhow::Result<()> {
    let issuer = DevIssuer::load_or_create(&settings.dev_issuer.key_file)?;
    let iss = args
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}/dev-issuer", settings.host, settings.port));
    let claims = TokenClaims::new(&iss, &settings.auth.audience, &grant_from(args)?, args.ttl);
    println!("{}", issuer.mint(&claims)?);
    Ok(())
}
