//! `deskd keys create|list|revoke`: key administration straight on the database (works while
//! the daemon runs: SQLite WAL lets both write).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Store, StoreError, DEFAULT_DATA_DIR};

/// `deskd keys ...`
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key and print it once (only its hash is kept).
    Create {
        /// A name to recognise the key by in `deskd keys list`.
        #[arg(long, default_value = "default")]
        name: String,
        /// Scope the key to one workspace (its id).
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (or its displayed prefix).
    Revoke {
        id: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Runs one `deskd keys` command.
pub fn keys_command(cmd: KeysCommand) -> ExitCode {
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deskd keys: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: KeysCommand) -> Result<(), StoreError> {
    match cmd {
        KeysCommand::Create {
            name,
            workspace,
            data_dir,
        } => {
            let store = Store::open(&data_dir)?;
            let created = store
                .create_key(&name, workspace.as_deref())
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => StoreError::NotFound {
                        what: "workspace (check the id with GET /api/workspaces)",
                    },
                    other => other,
                })?;
            eprintln!(
                "created key {} ({}){}; it is shown only now:",
                created.key.id,
                created.key.name,
                created
                    .key
                    .workspace_id
                    .as_deref()
                    .map(|w| format!(", scoped to workspace {w}"))
                    .unwrap_or_default()
            );
            println!("{}", created.secret);
        }
        KeysCommand::List { data_dir, json } => {
            let store = Store::open(&data_dir)?;
            let keys = store.list_keys()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&keys)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?
                );
            } else {
                println!(
                    "{:<36}  {:<23}  {:<16}  {:<36}  {:<24}  STATE",
                    "ID", "PREFIX", "NAME", "WORKSPACE", "CREATED"
                );
                for k in keys {
                    println!(
                        "{:<36}  {:<23}  {:<16}  {:<36}  {:<24}  {}",
                        k.id,
                        format!("{}...", k.prefix),
                        k.name,
                        k.workspace_id.as_deref().unwrap_or("(all)"),
                        k.created_at,
                        if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
        }
        KeysCommand::Revoke { id, data_dir } => {
            let store = Store::open(&data_dir)?;
            let key = store.revoke_key(&id).map_err(|e| match e {
                StoreError::NotFound { .. } => StoreError::NotFound {
                    what: "key with that id or prefix (see `deskd keys list`)",
                },
                other => other,
            })?;
            println!("revoked key {} ({})", key.id, key.name);
        }
    }
    Ok(())
}
