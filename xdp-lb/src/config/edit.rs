//! Runtime changes written back into the operator's configuration file, so the file
//! stays the one truth a restart or a reload starts from. `toml_edit` keeps the
//! operator's comments, order and layout; only the touched keys and tables change.
//! Services and backends are addressed by their position, which is the order
//! `config::load` read them in.
use std::{io::Write, path::Path};

use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use super::{BackendConfig, BackendState, Forwarding, ServiceConfig};

/// One change to the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    SetWeight {
        service: usize,
        backend: usize,
        weight: u32,
    },
    SetState {
        service: usize,
        backend: usize,
        state: BackendState,
    },
    AddBackend {
        service: usize,
        backend: BackendConfig,
    },
    RemoveBackend {
        service: usize,
        backend: usize,
    },
    AddService(ServiceConfig),
    RemoveService(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the configuration file is not valid TOML any more")]
    Parse(#[source] toml_edit::TomlError),
    #[error("the configuration file has no [[service]] number {0}")]
    NoService(usize),
    #[error("[[service]] number {service} has no [[service.backend]] number {backend}")]
    NoBackend { service: usize, backend: usize },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Returns `text` with `edit` applied.
pub fn apply(text: &str, edit: &Edit) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse().map_err(EditError::Parse)?;
    match edit {
        Edit::SetWeight {
            service,
            backend,
            weight,
        } => {
            let t = backend_table(&mut doc, *service, *backend)?;
            if *weight == 1 && !t.contains_key("weight") {
                // 1 is the default: leave the file as terse as the operator wrote it.
            } else {
                t["weight"] = value(i64::from(*weight));
            }
        }
        Edit::SetState {
            service,
            backend,
            state,
        } => {
            let t = backend_table(&mut doc, *service, *backend)?;
            if *state == BackendState::Active {
                t.remove("state");
            } else {
                t["state"] = value(state.as_str());
            }
        }
        Edit::AddBackend { service, backend } => {
            let forwarding = service_forwarding(&mut doc, *service)?;
            let svc = service_table(&mut doc, *service)?;
            if !svc.contains_key("backend") {
                svc.insert("backend", Item::ArrayOfTables(ArrayOfTables::new()));
            }
            let list = svc["backend"]
                .as_array_of_tables_mut()
                .ok_or(EditError::NoService(*service))?;
            list.push(backend_to_table(backend, forwarding));
        }
        Edit::RemoveBackend { service, backend } => {
            let list = backends(&mut doc, *service)?;
            if *backend >= list.len() {
                return Err(EditError::NoBackend {
                    service: *service,
                    backend: *backend,
                });
            }
            list.remove(*backend);
        }
        Edit::AddService(svc) => {
            if !doc.contains_key("service") {
                doc.insert("service", Item::ArrayOfTables(ArrayOfTables::new()));
            }
            let list = doc["service"]
                .as_array_of_tables_mut()
                .ok_or(EditError::NoService(0))?;
            list.push(service_to_table(svc));
        }
        Edit::RemoveService(i) => {
            let list = doc
                .get_mut("service")
                .and_then(Item::as_array_of_tables_mut)
                .ok_or(EditError::NoService(*i))?;
            if *i >= list.len() {
                return Err(EditError::NoService(*i));
            }
            list.remove(*i);
        }
    }
    Ok(doc.to_string())
}

fn service_table(doc: &mut DocumentMut, i: usize) -> Result<&mut Table, EditError> {
    doc.get_mut("service")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|l| l.get_mut(i))
        .ok_or(EditError::NoService(i))
}

fn service_forwarding(doc: &mut DocumentMut, i: usize) -> Result<Forwarding, EditError> {
    let t = service_table(doc, i)?;
    Ok(match t.get("forwarding").and_then(Item::as_str) {
        Some("dsr") => Forwarding::Dsr,
        _ => Forwarding::Nat,
    })
}

fn backends(doc: &mut DocumentMut, service: usize) -> Result<&mut ArrayOfTables, EditError> {
    service_table(doc, service)?
        .get_mut("backend")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or(EditError::NoBackend {
            service,
            backend: 0,
        })
}

fn backend_table(
    doc: &mut DocumentMut,
    service: usize,
    backend: usize,
) -> Result<&mut Table, EditError> {
    backends(doc, service)?
        .get_mut(backend)
        .ok_or(EditError::NoBackend { service, backend })
}

fn backend_to_table(b: &BackendConfig, forwarding: Forwarding) -> Table {
    let mut t = Table::new();
    t["addr"] = value(b.addr.to_string());
    // A DSR backend's port is the service's; writing it would only repeat it.
    if forwarding == Forwarding::Nat {
        t["port"] = value(i64::from(b.port));
    }
    if b.weight != 1 {
        t["weight"] = value(i64::from(b.weight));
    }
    if b.state != BackendState::Active {
        t["state"] = value(b.state.as_str());
    }
    if b.backup {
        t["backup"] = value(true);
    }
    t
}

fn service_to_table(s: &ServiceConfig) -> Table {
    let mut t = Table::new();
    t["name"] = value(s.name.clone());
    t["vip"] = value(s.vip.to_string());
    t["port"] = value(i64::from(s.port));
    t["proto"] = value(s.proto.as_str());
    t["algorithm"] = value(s.algorithm.as_str());
    t["forwarding"] = value(s.forwarding.as_str());
    t["table_size"] = value(i64::from(s.table_size));
    let mut list = ArrayOfTables::new();
    for b in &s.backends {
        list.push(backend_to_table(b, s.forwarding));
    }
    t.insert("backend", Item::ArrayOfTables(list));
    t
}

/// Replaces `path` with `contents` so that a reader sees the old file or the new
/// one, never a torn write: a temporary file in the same directory, flushed, given
/// the old file's permissions, then renamed over it.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), EditError> {
    let err = |source| EditError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(contents.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# production balancer
interfaces = ["eth0"]

[[service]]
name = "web"   # the shop
vip = "198.18.100.1"
port = 80

# first rack
[[service.backend]]
addr = "198.18.1.2"
port = 8080

[[service.backend]]
addr = "198.18.1.3"
port = 8080
weight = 2
"#;

    #[test]
    fn edits_keep_comments_and_touch_only_their_keys() {
        let out = apply(
            FILE,
            &Edit::SetWeight {
                service: 0,
                backend: 0,
                weight: 3,
            },
        )
        .unwrap();
        assert!(out.contains("# production balancer"));
        assert!(out.contains("# the shop"));
        assert!(out.contains("# first rack"));
        assert!(out.contains("weight = 3"), "{out}");
        let out = apply(
            &out,
            &Edit::SetState {
                service: 0,
                backend: 1,
                state: BackendState::Draining,
            },
        )
        .unwrap();
        assert!(out.contains("state = \"draining\""), "{out}");
        let back = apply(
            &out,
            &Edit::SetState {
                service: 0,
                backend: 1,
                state: BackendState::Active,
            },
        )
        .unwrap();
        assert!(!back.contains("state ="), "{back}");
        let removed = apply(
            &back,
            &Edit::RemoveBackend {
                service: 0,
                backend: 0,
            },
        )
        .unwrap();
        assert!(!removed.contains("198.18.1.2"), "{removed}");
        assert!(removed.contains("198.18.1.3"));
        assert!(matches!(
            apply(FILE, &Edit::RemoveService(3)),
            Err(EditError::NoService(3))
        ));
    }
}
