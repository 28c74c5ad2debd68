//! Configuration loading: built-in defaults, then an optional TOML file, then
//! `CASCADE_` environment variables, where nested keys are joined with `__`
//! (`CASCADE_CONTROL_PLANE__LISTEN` sets `control_plane.listen`).
//!
//! Every problem is reported against the place the operator wrote it: the
//! environment variable's name, the key and file, or the built-in default.
//! Values of secret keys never appear in errors or printouts.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Metadata, Source};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Prefix of every environment variable that configures Cascade.
pub const ENV_PREFIX: &str = "CASCADE_";

/// Environment variable naming the TOML file to load (like `--config`).
pub const CONFIG_FILE_ENV: &str = "CASCADE_CONFIG";

/// Separator between nested keys in environment variable names.
const ENV_NESTING: &str = "__";

/// What a redacted value is printed as.
pub const REDACTED: &str = "[redacted]";

/// Configuration that could not be loaded. Each problem names its key.
#[derive(Debug)]
pub struct ConfigError {
    /// One entry per bad key, in the order they were found.
    pub problems: Vec<Problem>,
}

/// One bad key: where it was set and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the operator set it: `CASCADE_X__Y`, `x.y in /etc/cascade.toml`,
    /// or `x.y` for a built-in default.
    pub location: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Checks that go beyond what the types already enforce (ranges, URL
/// schemes, cross-field rules). Implementations report against dotted keys
/// relative to themselves; [`Validator::section`] adds the prefix.
pub trait Validate {
    /// Reports every problem found; never stops at the first.
    fn validate(&self, v: &mut Validator);
}

/// A node id as registries, certificates and metric labels take it: 1–64
/// of A-Z a-z 0-9 - _ .
pub fn node_id_problem(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("1-64 of A-Z a-z 0-9 - _ .".into())
    }
}

/// Collects validation problems against dotted key paths.
#[derive(Debug, Default)]
pub struct Validator {
    prefix: Vec<String>,
    problems: Vec<(Vec<String>, String)>,
}

impl Validator {
    /// Records that `key` (relative to the current section) is invalid.
    pub fn invalid(&mut self, key: &str, message: impl Into<String>) {
        let mut path = self.prefix.clone();
        path.extend(key.split('.').map(str::to_owned));
        self.problems.push((path, message.into()));
    }

    /// Records a problem if `result` is an error.
    pub fn check(&mut self, key: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.invalid(key, message);
        }
    }

    /// The dotted keys reported so far (for tests and diagnostics).
    pub fn problem_keys(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|(path, _)| path.join("."))
            .collect()
    }

    /// Validates a nested section under `name`.
    pub fn section(&mut self, name: &str, section: &dyn Validate) {
        self.prefix.push(name.to_owned());
        section.validate(self);
        self.prefix.pop();
    }
}

/// A loaded, validated configuration and the figment it came from.
pub struct Loaded<T> {
    /// The typed configuration.
    pub config: T,
    figment: Figment,
}

impl<T: Serialize> Loaded<T> {
    /// The effective configuration as TOML, secrets redacted, for
    /// `--print-config` and start-up logs.
    pub fn to_redacted_toml(&self) -> String {
        redacted_toml(&self.config)
    }

    /// The figment the configuration was extracted from (for diagnostics).
    pub fn figment(&self) -> &Figment {
        &self.figment
    }
}

/// Loads `T` from defaults, the optional TOML `file`, and the process
/// environment, then validates it.
pub fn load<T>(file: Option<&Path>) -> Result<Loaded<T>, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError {
                problems: vec![Problem {
                    location: format!("config file {}", path.display()),
                    message: "not found or not a regular file".into(),
                }],
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // CASCADE_CONFIG names the file; it is not itself a configuration key.
    // Other CASCADE_ variables that are not ours (a script's CASCADE_BIN)
    // must not stop every command, while typos in ours must still be caught:
    // a variable is configuration when it names a nested key (`__`) or
    // starts with one of the top-level sections (`CASCADE_EDGE_REGION`, a
    // missing underscore, is reported as the unknown key `edge_region`).
    let sections = top_level_keys(&T::default());
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&["config"])
            .filter(move |key| {
                let key = key.as_str().to_ascii_lowercase();
                key.contains(ENV_NESTING) || sections.iter().any(|s| key.starts_with(s.as_str()))
            })
            .split(ENV_NESTING),
    );
    extract(figment)
}

/// The names of `value`'s top-level keys (its configuration sections).
fn top_level_keys<T: Serialize>(value: &T) -> Vec<String> {
    figment::value::Value::serialize(value)
        .ok()
        .and_then(figment::value::Value::into_dict)
        .map(|dict| dict.into_keys().map(|k| k.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

/// Extracts and validates `T` from an already assembled figment. Tests use
/// this with `Figment::from(..)` to avoid touching the process environment.
pub fn extract<T>(figment: Figment) -> Result<Loaded<T>, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let config: T = match figment.extract() {
        Ok(config) => config,
        Err(error) => {
            let problems = error
                .into_iter()
                .map(|e| problem_from_figment(&figment, e))
                .collect();
            return Err(ConfigError { problems });
        }
    };
    let mut validator = Validator::default();
    config.validate(&mut validator);
    if validator.problems.is_empty() {
        Ok(Loaded { config, figment })
    } else {
        let problems = validator
            .problems
            .into_iter()
            .map(|(path, message)| {
                let value = value_for_message(&figment, &path);
                Problem {
                    location: locate(&figment, &path),
                    message: match value {
                        Some(value) => format!("{message} (got {value})"),
                        None => message,
                    },
                }
            })
            .collect();
        Err(ConfigError { problems })
    }
}

/// Which file the operator asked for: `--config` wins over `CASCADE_CONFIG`.
pub fn config_file(cli: Option<PathBuf>) -> Option<PathBuf> {
    cli.or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from))
}

fn problem_from_figment(figment: &Figment, error: figment::Error) -> Problem {
    use figment::error::Kind;

    let mut path = error.path.clone();
    // Depending on the provider, an unknown field is reported against its
    // parent or against itself; name the field exactly once.
    if let Kind::UnknownField(field, _) = &error.kind
        && path.last() != Some(field)
    {
        path.push(field.clone());
    }
    let secret = is_secret(&path);
    let message = match &error.kind {
        Kind::UnknownField(_, []) => "unknown key".to_owned(),
        Kind::UnknownField(_, expected) => {
            format!("unknown key (expected one of: {})", expected.join(", "))
        }
        Kind::InvalidType(_, expected) if secret => format!("invalid type, expected {expected}"),
        Kind::InvalidValue(_, expected) if secret => format!("invalid value, expected {expected}"),
        Kind::Message(message) => match value_for_message(figment, &path) {
            Some(value) => format!("{message} (got {value})"),
            None => message.clone(),
        },
        other => other.to_string(),
    };
    Problem {
        location: if path.is_empty() {
            "configuration".to_owned()
        } else {
            locate_with(error.metadata.as_ref(), figment, &path)
        },
        message,
    }
}

/// The value at `path`, quoted, unless the key is secret or absent.
fn value_for_message(figment: &Figment, path: &[String]) -> Option<String> {
    if is_secret(path) {
        return None;
    }
    let value = figment.find_value(&path.join(".")).ok()?;
    if let Some(s) = value.as_str() {
        return Some(format!("{s:?}"));
    }
    value
        .to_i128()
        .map(|n| n.to_string())
        .or_else(|| value.to_u128().map(|n| n.to_string()))
        .or_else(|| value.to_f64().map(|n| n.to_string()))
        .or_else(|| value.to_bool().map(|b| b.to_string()))
}

fn locate(figment: &Figment, path: &[String]) -> String {
    locate_with(None, figment, path)
}

/// Describes where the value at `path` came from, in the operator's terms.
fn locate_with(fallback: Option<&Metadata>, figment: &Figment, path: &[String]) -> String {
    let dotted = path.join(".");
    let metadata = figment.find_metadata(&dotted).or(fallback);
    match metadata {
        Some(md) if md.name.contains("environment variable") => env_var_name(path),
        Some(md) => match &md.source {
            Some(Source::File(file)) => format!("{dotted} in {}", file.display()),
            // Built-in defaults: the dotted key is what the operator would set.
            _ => dotted,
        },
        None => dotted,
    }
}

/// The environment variable that sets `path`: `CASCADE_A__B`.
pub fn env_var_name(path: &[String]) -> String {
    let keys: Vec<String> = path.iter().map(|k| k.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", keys.join(ENV_NESTING))
}

/// Keys whose values must never be printed. URLs are partly secret: their
/// password is redacted and the rest kept, so operators can still see which
/// host a service talks to.
fn is_secret(path: &[String]) -> bool {
    path.last().is_some_and(|key| {
        let key = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "token",
            "private_key",
            "credential",
            "url",
        ]
        .iter()
        .any(|word| key.contains(word))
    })
}

/// Serializes `config` to TOML with every secret value redacted.
pub fn redacted_toml<T: Serialize>(config: &T) -> String {
    let mut value = match toml::Value::try_from(config) {
        Ok(value) => value,
        Err(error) => return format!("# configuration could not be printed: {error}\n"),
    };
    redact(&mut Vec::new(), &mut value);
    toml::to_string_pretty(&value)
        .unwrap_or_else(|error| format!("# configuration could not be printed: {error}\n"))
}

fn redact(path: &mut Vec<String>, value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table.iter_mut() {
                path.push(key.clone());
                redact(path, child);
                path.pop();
            }
        }
        toml::Value::String(s) if is_secret(path) => {
            let is_url_key = path.last().is_some_and(|k| k.ends_with("url"));
            *s = if is_url_key {
                redact_url(s)
            } else {
                REDACTED.to_owned()
            };
        }
        _ => {}
    }
}

/// Replaces the password of a URL; anything that does not parse is redacted
/// whole, since it might be a password pasted in the wrong place.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_none() {
                return url.to_string();
            }
            // A placeholder the URL encoder leaves alone, swapped for the
            // readable marker afterwards.
            const PLACEHOLDER: &str = "REDACTED-PASSWORD";
            if url.set_password(Some(PLACEHOLDER)).is_err() {
                return REDACTED.to_owned();
            }
            url.to_string().replacen(PLACEHOLDER, REDACTED, 1)
        }
        Err(_) => REDACTED.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Root {
        server: Server,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Server {
        listen: SocketAddr,
        workers: u16,
        database_url: Option<String>,
        api_secret: Option<String>,
    }

    impl Default for Server {
        fn default() -> Self {
            Server {
                listen: "127.0.0.1:8080".parse().expect("valid literal"),
                workers: 2,
                database_url: None,
                api_secret: None,
            }
        }
    }

    impl Validate for Root {
        fn validate(&self, v: &mut Validator) {
            v.section("server", &self.server);
        }
    }

    impl Validate for Server {
        fn validate(&self, v: &mut Validator) {
            if self.workers == 0 {
                v.invalid("workers", "must be at least 1");
            }
        }
    }

    /// Loads `Root` through the real `load` path inside a figment `Jail`,
    /// which gives the closure its own environment and working directory.
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure signature")]
    fn load_with(vars: &[(&str, &str)], file: Option<&str>) -> Result<Root, Vec<String>> {
        let mut outcome = Err(vec![]);
        figment::Jail::expect_with(|jail| {
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            let path = file.map(|contents| {
                jail.create_file("cascade.toml", contents)
                    .expect("write file");
                jail.directory().join("cascade.toml")
            });
            outcome = load::<Root>(path.as_deref())
                .map(|loaded| loaded.config)
                .map_err(|e| e.problems.iter().map(ToString::to_string).collect());
            Ok(())
        });
        outcome
    }

    fn problems(vars: &[(&str, &str)]) -> Vec<String> {
        load_with(vars, None).err().unwrap_or_default()
    }

    #[test]
    fn defaults_load_without_problems() {
        let config = load_with(&[], None).expect("defaults are valid");
        assert_eq!(config.server.workers, 2);
    }

    #[test]
    fn env_overrides_nested_keys_and_ignores_config_file_var() {
        let config = load_with(
            &[
                ("CASCADE_SERVER__LISTEN", "0.0.0.0:9000"),
                ("CASCADE_CONFIG", "/nonexistent.toml"),
            ],
            Some("[server]\nlisten = \"127.0.0.1:1\"\nworkers = 3\n"),
        )
        .expect("valid");
        assert_eq!(config.server.listen.port(), 9000, "env beats the file");
        assert_eq!(config.server.workers, 3, "the file beats defaults");
    }

    #[test]
    fn bad_address_names_the_env_var_and_value() {
        let p = problems(&[("CASCADE_SERVER__LISTEN", "abc")]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("CASCADE_SERVER__LISTEN: "), "{p:?}");
        assert!(p[0].contains("invalid socket address"), "{p:?}");
        assert!(p[0].contains("\"abc\""), "{p:?}");
    }

    #[test]
    fn bad_number_names_the_env_var() {
        let p = problems(&[("CASCADE_SERVER__WORKERS", "lots")]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("CASCADE_SERVER__WORKERS: "), "{p:?}");
        assert!(p[0].contains("u16"), "{p:?}");
    }

    #[test]
    fn out_of_range_number_names_the_env_var() {
        let p = problems(&[("CASCADE_SERVER__WORKERS", "70000")]);
        assert!(p[0].starts_with("CASCADE_SERVER__WORKERS: "), "{p:?}");
    }

    #[test]
    fn unknown_key_is_named_in_full() {
        let p = problems(&[("CASCADE_SERVER__LISTN", "127.0.0.1:1")]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("CASCADE_SERVER__LISTN: unknown key"),
            "{p:?}"
        );
        assert!(p[0].contains("listen"), "suggests valid keys: {p:?}");
    }

    #[test]
    fn unrelated_cascade_variables_are_not_configuration() {
        let config = load_with(
            &[
                ("CASCADE_BIN", "/usr/local/bin/cascade"),
                ("CASCADE_TOKEN", "x"),
                ("CASCADE_SERVER__WORKERS", "4"),
            ],
            None,
        )
        .expect("a script's CASCADE_BIN is not a configuration key");
        assert_eq!(config.server.workers, 4);
    }

    #[test]
    fn a_section_with_a_missing_underscore_is_still_an_unknown_key() {
        let p = problems(&[("CASCADE_SERVER_LISTEN", "127.0.0.1:1")]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("CASCADE_SERVER_LISTEN: unknown key"),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_key_in_a_file_is_named_once_with_the_file() {
        let p = load_with(&[], Some("[server]\nlistn = \"127.0.0.1:1\"\n")).expect_err("invalid");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("server.listn in /"), "{p:?}");
        assert!(p[0].contains("cascade.toml: unknown key"), "{p:?}");
    }

    #[test]
    fn validation_problems_name_the_env_var() {
        let p = problems(&[("CASCADE_SERVER__WORKERS", "0")]);
        assert_eq!(
            p,
            vec!["CASCADE_SERVER__WORKERS: must be at least 1 (got 0)".to_owned()]
        );
    }

    #[test]
    fn problems_in_a_file_name_the_file_and_key() {
        let p = load_with(&[], Some("[server]\nworkers = 0\n")).expect_err("invalid");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("server.workers in /"), "{p:?}");
        assert!(p[0].contains("cascade.toml: must be at least 1"), "{p:?}");
    }

    #[test]
    fn missing_config_file_is_a_clear_error() {
        let err = load::<Root>(Some(Path::new("/nonexistent/cascade.toml")))
            .err()
            .expect("missing file");
        assert!(
            err.to_string()
                .contains("/nonexistent/cascade.toml: not found"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_not_echoed_in_errors() {
        let p = problems(&[("CASCADE_SERVER__API_SECRET", "42")]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(!p[0].contains("42"), "{p:?}");
    }

    #[test]
    fn printout_redacts_secrets_and_url_passwords() {
        let mut root = Root::default();
        root.server.database_url = Some("postgres://app:hunter2@db:5432/cascade".into());
        root.server.api_secret = Some("s3cr3t".into());
        let out = redacted_toml(&root);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(
            out.contains("postgres://app:[redacted]@db:5432/cascade"),
            "host stays visible: {out}"
        );
        assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    }

    #[test]
    fn url_without_password_is_kept_and_garbage_is_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("not a url hunter2"), REDACTED);
    }
}
