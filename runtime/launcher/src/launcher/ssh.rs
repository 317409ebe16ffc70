//! Commands on a machine over OpenSSH, and copies to it with rsync, as Ray's cluster
//! launcher does them: the system `ssh` and `rsync` clients, one shared connection per
//! machine (`ControlMaster`), no host-key prompts.
//!
//! Secrets (the cluster token) never go on a command line, where `ps` on either end
//! would show them: a command's environment is sent as a script on ssh's stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;
use thiserror::Error;

/// Why a remote step failed.
#[derive(Debug, Error)]
pub enum SshError {
    /// `ssh` or `rsync` could not be run here.
    #[error("running {program}: {source} (is it installed?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The remote command ended with a failure.
    #[error("on {host}: `{command}` failed ({status}){}", tail(.output))]
    Failed {
        /// The machine.
        host: String,
        /// The command as written in the cluster file.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of what it printed.
        output: String,
    },
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(15);
    if lines.is_empty() {
        String::new()
    } else {
        format!(":\n  {}", lines[start..].join("\n  "))
    }
}

/// How to log in to the machines of one cluster.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Login user (None: ssh's default, the local user).
    pub user: Option<String>,
    /// Private key file.
    pub key: Option<PathBuf>,
    /// `ProxyCommand`.
    pub proxy_command: Option<String>,
    /// Where control sockets live (short path: sockets have a 108-byte limit).
    pub control_dir: PathBuf,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// A directory (relative to the remote home) put first on `PATH` for commands.
    pub remote_bin: Option<String>,
}

/// One machine reached over ssh.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Host name or address.
    pub host: String,
    options: SshOptions,
}

impl Machine {
    /// A machine at `host`.
    pub fn new(host: &str, options: SshOptions) -> Self {
        Self {
            host: host.to_string(),
            options,
        }
    }

    fn destination(&self) -> String {
        match &self.options.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// ssh's options, as `-o` arguments.
    fn ssh_options(&self) -> Vec<String> {
        let o = &self.options;
        let mut args = vec![
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={}", o.connect_timeout.as_secs().max(1)),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            format!("ControlPath={}/%C", o.control_dir.display()),
            "-o".into(),
            "ControlPersist=60s".into(),
        ];
        if let Some(key) = &o.key {
            args.extend([
                "-i".into(),
                key.display().to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        if let Some(proxy) = &o.proxy_command {
            args.extend(["-o".into(), format!("ProxyCommand={proxy}")]);
        }
        args
    }

    /// `export PATH=...;` for [`SshOptions::remote_bin`] (left unquoted for `$HOME`).
    fn path_export(&self) -> String {
        match &self.options.remote_bin {
            Some(dir) => format!("export PATH=\"$HOME/{dir}:$PATH\";\n"),
            None => String::new(),
        }
    }

    fn ssh(&self) -> Command {
        let _ = std::fs::create_dir_all(&self.options.control_dir);
        let mut c = Command::new("ssh");
        c.args(self.ssh_options());
        c
    }

    /// Runs `command` in a login shell on the machine with `env` exported first, and
    /// returns what it printed (stdout and stderr together). `command` is the text
    /// shown in errors.
    pub fn run(&self, command: &str, env: &[(String, String)]) -> Result<String, SshError> {
        self.run_in(&["bash", "--login", "-s"], command, env)
    }

    /// [`Machine::run`] with the script fed to `shell` on the machine instead of a
    /// login shell there (e.g. `docker exec -i NAME bash --login -s`: inside a
    /// container).
    pub fn run_in(
        &self,
        shell: &[&str],
        command: &str,
        env: &[(String, String)],
    ) -> Result<String, SshError> {
        let mut script = self.path_export();
        for (k, v) in env {
            script.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        script.push_str("exec 2>&1\n");
        script.push_str(command);
        script.push('\n');
        let mut child = self
            .ssh()
            .arg(self.destination())
            .args(shell)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SshError::Spawn {
                program: "ssh",
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A failed write shows as the command failing below.
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| SshError::Spawn {
            program: "ssh",
            source,
        })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(SshError::Failed {
                host: self.host.clone(),
                command: command.to_string(),
                status: out.status,
                output: text,
            })
        }
    }

    /// Runs `command` (or a login shell) with this terminal attached, for `exec` and
    /// `attach`; returns its exit status. `container`: inside that container of the
    /// machine (`docker exec`). `env` goes on the remote command line: no secrets.
    pub fn interactive(
        &self,
        container: Option<&str>,
        command: Option<&str>,
        env: &[(String, String)],
    ) -> Result<ExitStatus, SshError> {
        let mut c = self.ssh();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
        c.arg(if tty { "-tt" } else { "-T" })
            .arg(self.destination());
        let exports: String = std::iter::once(self.path_export().replace('\n', " "))
            .chain(
                env.iter()
                    .map(|(k, v)| format!("export {k}={}; ", shell_quote(v))),
            )
            .collect();
        let script = match command {
            Some(cmd) => format!("{exports}{cmd}"),
            None => format!("{exports}exec bash --login"),
        };
        let inner = format!("bash --login -c {}", shell_quote(&script));
        let remote = match container {
            // `docker` from a login shell, which may set DOCKER_HOST and PATH for it.
            Some(name) => format!(
                "bash --login -c {}",
                shell_quote(&format!(
                    "exec docker exec {} {} {inner}",
                    if tty { "-it" } else { "-i" },
                    shell_quote(name)
                ))
            ),
            None => inner,
        };
        c.arg(remote);
        c.status().map_err(|source| SshError::Spawn {
            program: "ssh",
            source,
        })
    }

    /// Copies `local` (a file, or a directory's contents) to `remote` on the machine
    /// with rsync, deleting what the source no longer has; `remote` may start with
    /// `~/`. Unchanged files are not sent again.
    pub fn copy(
        &self,
        local: &Path,
        remote: &str,
        exclude: &[String],
        filter: &[String],
    ) -> Result<(), SshError> {
        let remote = remote.strip_prefix("~/").unwrap_or(remote);
        let is_dir = local.is_dir();
        let parent = match Path::new(remote).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
            _ => ".".into(),
        };
        let target = if is_dir {
            remote.to_string()
        } else {
            parent.clone()
        };
        self.run(&format!("mkdir -p {}", shell_quote(&target)), &[])?;
        let ssh_command = std::iter::once("ssh".to_string())
            .chain(self.ssh_options().into_iter().map(|a| shell_quote(&a)))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = Command::new("rsync");
        c.args(["-a", "--delete", "-e", &ssh_command]);
        for e in exclude {
            c.arg(format!("--exclude={e}"));
        }
        for f in filter {
            c.arg(format!("--filter=dir-merge,- {f}"));
        }
        let source = if is_dir {
            format!("{}/", local.display())
        } else {
            local.display().to_string()
        };
        c.arg(source)
            .arg(format!("{}:{remote}", self.destination()));
        let out = c.output().map_err(|source| SshError::Spawn {
            program: "rsync",
            source,
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SshError::Failed {
                host: self.host.clone(),
                command: format!("rsync {} -> {remote}", local.display()),
                status: out.status,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Closes the shared connection, if one is open.
    pub fn close(&self) {
        let _ = self
            .ssh()
            .args(["-O", "exit"])
            .arg(self.destination())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `s` as one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting_keeps_words_whole() {
        assert_eq!(shell_quote("abc-1.2"), "abc-1.2");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
    }
}
