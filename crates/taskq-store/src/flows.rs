//! Flows in the store: a flow's task carries `flow: { id, name?, on_failure?, depends_on: [ids] }`
//! (see [`taskq_core::flow`]), indexed by `flow.id`, so a flow is read back with one
//! query; dependencies' records are read by id (their results are what a dependent's
//! handler reads), and recovery reads the `waiting` records to register them again.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use serde_json::Value;
use taskq_core::{FlowLink, TaskId, TaskStatus};

use crate::doc::{f, id_and_result, id_and_result_fields, stored_task};
use crate::{Error, Result, Store, StoredTask};

/// Most ids asked for in one `$in` query.
const IDS_PER_QUERY: usize = 1_000;

/// The `flow` subdocument of a record.
pub(crate) fn link_doc(link: &FlowLink) -> Document {
    let mut d = doc! { "id": link.id.to_string() };
    if let Some(name) = &link.name {
        d.insert("name", name.as_str());
    }
    if link.on_failure {
        d.insert("on_failure", true);
    }
    d.insert(
        "depends_on",
        link.depends_on
            .iter()
            .map(|id| Bson::String(id.to_string()))
            .collect::<Vec<_>>(),
    );
    d
}

/// Reads the `flow` subdocument of record `label`.
pub(crate) fn read_link(d: &Document, label: &str) -> Result<FlowLink> {
    let corrupt = |reason: &str| Error::Corrupt {
        id: label.to_owned(),
        reason: format!("field `flow` {reason}"),
    };
    let id = d
        .get_str("id")
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("has no valid `id`"))?;
    let name = match d.get("name") {
        None | Some(Bson::Null) => None,
        Some(Bson::String(s)) => Some(s.clone()),
        Some(_) => return Err(corrupt("has a `name` that is not a string")),
    };
    let depends_on = match d.get("depends_on") {
        None | Some(Bson::Null) => Vec::new(),
        Some(Bson::Array(a)) => a
            .iter()
            .map(|v| v.as_str().and_then(|s| s.parse().ok()))
            .collect::<Option<Vec<TaskId>>>()
            .ok_or_else(|| corrupt("has a `depends_on` entry that is not a task id"))?,
        Some(_) => return Err(corrupt("has a `depends_on` that is not an array")),
    };
    Ok(FlowLink {
        id,
        name,
        depends_on,
        on_failure: d.get_bool("on_failure").unwrap_or(false),
    })
}

impl Store {
    /// The index [`Store::flow_tasks`] relies on. Idempotent.
    pub(crate) async fn ensure_flow_indexes(&self) -> Result<()> {
        self.tasks
            .create_index(
                IndexModel::builder()
                    .keys(doc! { f::FLOW_ID: 1, f::ID: 1 })
                    .options(
                        IndexOptions::builder()
                            .name("flow_id".to_owned())
                            .sparse(true)
                            .build(),
                    )
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Every task of flow `flow`, oldest first (the order of the flow request).
    pub async fn flow_tasks(&self, flow: TaskId) -> Result<Vec<StoredTask>> {
        let docs: Vec<Document> = self
            .tasks
            .find(doc! { f::FLOW_ID: flow.to_string() })
            .sort(doc! { f::ID: 1 })
            .await?
            .try_collect()
            .await?;
        docs.iter().map(stored_task).collect()
    }

    /// The records of `ids` that exist, in no particular order.
    pub async fn get_many(&self, ids: &[TaskId]) -> Result<Vec<StoredTask>> {
        self.docs_of(ids, None)
            .await?
            .iter()
            .map(stored_task)
            .collect()
    }

    /// The result of each of `ids` (`None` for a task without one); tasks without a
    /// record are left out. One query per thousand ids, reading only ids and results.
    pub async fn results(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, Option<Value>>> {
        self.docs_of(ids, Some(id_and_result_fields()))
            .await?
            .iter()
            .map(id_and_result)
            .collect()
    }

    /// The result of every task of flow `flow` but `except` (its failure handler), by id
    /// (`None` for a task without one). One query, reading only ids and results.
    pub async fn flow_results(
        &self,
        flow: TaskId,
        except: TaskId,
    ) -> Result<HashMap<TaskId, Option<Value>>> {
        let filter = doc! { f::FLOW_ID: flow.to_string(), f::ID: { "$ne": except.to_string() } };
        self.find_docs(filter, Some(id_and_result_fields()))
            .await?
            .iter()
            .map(id_and_result)
            .collect()
    }

    /// The documents of `ids` that exist, one query per [`IDS_PER_QUERY`] ids, with only
    /// the fields of `projection` when given.
    async fn docs_of(&self, ids: &[TaskId], projection: Option<Document>) -> Result<Vec<Document>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let keys: Vec<String> = chunk.iter().map(TaskId::to_string).collect();
            out.extend(
                self.find_docs(doc! { f::ID: { "$in": keys } }, projection.clone())
                    .await?,
            );
        }
        Ok(out)
    }

    /// Every document matching `filter`, with only the fields of `projection` when given.
    async fn find_docs(
        &self,
        filter: Document,
        projection: Option<Document>,
    ) -> Result<Vec<Document>> {
        let mut find = self.tasks.find(filter);
        if let Some(p) = projection {
            find = find.projection(p);
        }
        Ok(find.await?.try_collect().await?)
    }

    /// Up to `limit` `waiting` tasks with ids above `after`, oldest first: what recovery
    /// registers again after Redis was lost.
    pub async fn waiting(&self, after: Option<TaskId>, limit: u32) -> Result<Vec<StoredTask>> {
        self.by_status_after(TaskStatus::Waiting.as_str(), after, limit)
            .await
    }
}
