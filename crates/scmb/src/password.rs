//! Every password source in one reader: a flag (visible in `ps`, so warned about), a file, an
//! environment variable, a systemd credential, or a prompt on the terminal. A command line
//! gives a chain of sources tried in order; a config file gives exactly one. The password is
//! read only when something needs it (a listener that never logs in never prompts), and it
//! lives only in a [`Secret`], which never prints.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use scmb_oneview::Secret;

/// Where a password may come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Typed on the command line (`flag`): works, with a warning, because `ps` shows it.
    Flag {
        flag: &'static str,
        secret: Secret,
        /// The better sources, named in the warning.
        prefer: &'static str,
    },
    /// Already read (from a config file's source, when the appliance started).
    Read(Secret),
    /// The first line of a file.
    File(PathBuf),
    /// An environment variable; `required`: an unset one is an error, not the next source.
    Env { var: String, required: bool },
    /// A systemd credential (`LoadCredential=NAME:PATH`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
    /// Asked for on the terminal (only when standard input is one).
    Prompt(&'static str),
    /// The empty password (the HPE sample's Service Manager user has none).
    Empty,
}

/// A password, by the sources it is read from, first found wins.
#[derive(Debug, Clone, PartialEq)]
pub struct Password {
    sources: Vec<Source>,
    /// What to tell the user when no source gives one.
    missing: &'static str,
}

impl Password {
    pub fn new(sources: Vec<Source>, missing: &'static str) -> Password {
        Password { sources, missing }
    }

    /// A command line's chain: the flag's value (`flag`, warned about, naming the better
    /// sources `prefer`), the password file, the environment variable `env`, then the prompt
    /// `label` on a terminal.
    pub fn from_command_line(
        (flag, value): (&'static str, Option<&Secret>),
        file: Option<&Path>,
        env: &str,
        (label, prefer): (&'static str, &'static str),
        missing: &'static str,
    ) -> Password {
        let mut sources = Vec::new();
        if let Some(secret) = value {
            sources.push(Source::Flag {
                flag,
                secret: secret.clone(),
                prefer,
            });
        }
        if let Some(f) = file {
            sources.push(Source::File(f.to_path_buf()));
        }
        sources.push(Source::Env {
            var: env.to_string(),
            required: false,
        });
        sources.push(Source::Prompt(label));
        Password::new(sources, missing)
    }

    /// The empty password when no source gives one (the HPE sample's `falcon` user has none).
    pub fn or_empty(mut self) -> Password {
        self.sources.push(Source::Empty);
        self
    }

    /// A password already read.
    pub fn read_already(secret: Secret) -> Password {
        Password::new(vec![Source::Read(secret)], "no password")
    }

    /// Whether one was typed on the command line (it then goes unused by a command that
    /// needs none, which is worth a debug line).
    pub fn typed(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s, Source::Flag { .. }))
    }

    /// Reads it now. The error names the source, never the secret.
    pub fn read(&self) -> Result<Secret, String> {
        for source in &self.sources {
            match source {
                Source::Flag {
                    flag,
                    secret,
                    prefer,
                } => {
                    tracing::warn!("{flag} puts the password where `ps` shows it: prefer {prefer}");
                    return Ok(secret.clone());
                }
                Source::Read(s) => return Ok(s.clone()),
                Source::File(path) => return first_line(path),
                Source::Env { var, required } => match std::env::var(var) {
                    Ok(v) => return Ok(Secret::new(v)),
                    Err(_) if *required => {
                        return Err(format!(
                            "password_env: the environment variable {var} is not set"
                        ))
                    }
                    Err(_) => {}
                },
                Source::Credential(name) => {
                    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                        format!("password_credential {name:?}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for units with LoadCredential=)")
                    })?;
                    return first_line(&Path::new(&dir).join(name));
                }
                Source::Prompt(label) => {
                    if std::io::stdin().is_terminal() {
                        return prompt(label).map(Secret::new);
                    }
                }
                Source::Empty => return Ok(Secret::default()),
            }
        }
        Err(self.missing.to_string())
    }
}

/// Where a config file's password comes from: exactly one of the three `password_*` keys of
/// a table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecretRef {
    /// The name of an environment variable holding it.
    pub password_env: Option<String>,
    /// A file whose first line is it (keep it `chmod 600`).
    pub password_file: Option<PathBuf>,
    /// The name of a systemd credential (`LoadCredential=NAME:PATH` in the unit), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub password_credential: Option<String>,
}

impl SecretRef {
    /// The one source given, or what is wrong.
    pub fn source(&self) -> Result<Source, String> {
        match (
            &self.password_env,
            &self.password_file,
            &self.password_credential,
        ) {
            (Some(var), None, None) => Ok(Source::Env {
                var: var.clone(),
                required: true,
            }),
            (None, Some(file), None) => Ok(Source::File(file.clone())),
            (None, None, Some(name)) => Ok(Source::Credential(name.clone())),
            (None, None, None) => {
                Err("no password: set password_env, password_file or password_credential".into())
            }
            _ => Err("give only one of password_env, password_file and password_credential".into()),
        }
    }

    /// Exactly one source is given.
    pub fn check(&self) -> Result<(), String> {
        self.source().map(|_| ())
    }

    /// Reads the secret now. Errors never contain it.
    pub fn read(&self) -> Result<Secret, String> {
        Password::new(vec![self.source()?], "no password").read()
    }
}

fn first_line(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| {
            format!(
                "cannot read the password file {}: {e} (check the path, and that the user scmb runs as may read it)",
                path.display()
            )
        })?;
    Ok(Secret::new(text.lines().next().unwrap_or("")))
}

/// Asks for a password on the terminal with echo off (only called when standard input is one):
/// the prompt goes to standard error, as it always has, and the answer is read from the
/// controlling terminal (`/dev/tty`), whose settings `rpassword` restores afterwards.
pub fn prompt(label: &str) -> Result<String, String> {
    prompt_with(
        label,
        rpassword::ConfigBuilder::new()
            .output_writer(std::io::stderr())
            .build(),
    )
}

/// [`prompt`] with another terminal (tests give it canned input).
fn prompt_with(label: &str, config: rpassword::Config) -> Result<String, String> {
    rpassword::prompt_password_with_config(label, config)
        .map_err(|e| format!("cannot read the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_reads_one_line_and_its_errors_are_one_line() {
        let typed = rpassword::ConfigBuilder::new()
            .input_data("s3cret\r\nnext line\n")
            .output_discard()
            .build();
        assert_eq!(prompt_with("Password: ", typed).expect("typed"), "s3cret");
        let no_tty = rpassword::ConfigBuilder::new()
            .input_file_path("/nonexistent/scmb/tty")
            .output_discard()
            .build();
        let e = prompt_with("Password: ", no_tty).expect_err("no terminal");
        assert!(e.starts_with("cannot read the password: "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    /// Without a terminal on standard input nobody is asked: the next source, or the error
    /// that names what to set.
    #[test]
    fn without_a_terminal_the_prompt_is_skipped() {
        if std::io::stdin().is_terminal() {
            return; // run by hand in a terminal: the prompt would wait for a person
        }
        let p = Password::new(vec![Source::Prompt("Password: ")], "no password given");
        assert_eq!(p.read().expect_err("skipped"), "no password given");
        let p = Password::new(vec![Source::Prompt("Password: "), Source::Empty], "unused");
        assert_eq!(p.read().expect("next source").expose(), "");
    }

    #[test]
    fn secrets_come_from_env_files_and_systemd_credentials_and_never_print() {
        let dir = std::env::temp_dir().join(format!("scmb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("ov-east"), "s3cret-from-credential\n").expect("write");
        let file = SecretRef {
            password_file: Some(dir.join("ov-east")),
            ..SecretRef::default()
        };
        let s = file.read().expect("file");
        assert_eq!(s.expose(), "s3cret-from-credential");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        std::env::set_var("SCMB_TEST_SECRET_VAR", "from-env");
        let env = SecretRef {
            password_env: Some("SCMB_TEST_SECRET_VAR".into()),
            ..SecretRef::default()
        };
        assert_eq!(env.read().expect("env").expose(), "from-env");
        let missing = SecretRef {
            password_env: Some("SCMB_TEST_SECRET_UNSET".into()),
            ..SecretRef::default()
        };
        assert!(missing
            .read()
            .expect_err("unset")
            .contains("SCMB_TEST_SECRET_UNSET"));
        let cred = SecretRef {
            password_credential: Some("ov-east".into()),
            ..SecretRef::default()
        };
        std::env::set_var("CREDENTIALS_DIRECTORY", &dir);
        assert_eq!(
            cred.read().expect("cred").expose(),
            "s3cret-from-credential"
        );
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        assert!(cred
            .read()
            .expect_err("no dir")
            .contains("CREDENTIALS_DIRECTORY"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_command_lines_chain_takes_the_first_source_that_gives_one() {
        let chain = |first: Option<Source>| {
            let mut s: Vec<Source> = first.into_iter().collect();
            s.push(Source::Env {
                var: "SCMB_TEST_CHAIN_UNSET".into(),
                required: false,
            });
            s.push(Source::Empty);
            Password::new(s, "none")
        };
        assert_eq!(chain(None).read().expect("empty").expose(), "");
        let typed = chain(Some(Source::Flag {
            flag: "-x",
            secret: Secret::new("pw"),
            prefer: "$SM_PASSWORD",
        }));
        assert!(typed.typed());
        assert_eq!(typed.read().expect("flag").expose(), "pw");
        let nothing = Password::new(
            vec![Source::Env {
                var: "SCMB_TEST_CHAIN_UNSET".into(),
                required: false,
            }],
            "no password: set $X",
        );
        assert_eq!(nothing.read().expect_err("none"), "no password: set $X");
        let missing_file = Password::new(
            vec![Source::File("/nonexistent/pw".into()), Source::Empty],
            "none",
        );
        assert!(missing_file
            .read()
            .expect_err("file")
            .contains("/nonexistent/pw"));
    }
}
