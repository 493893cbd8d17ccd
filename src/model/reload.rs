//! Model hot reload for the service: on SIGHUP or when the model file changes, load and validate
//! the new artifact. A model that does not load, fails validation or needs another feature spec
//! (the running state was built for this one) is rejected, and the current model keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::model::ModelArtifact;

pub struct ModelWatcher {
    path: PathBuf,
    mtime: Option<SystemTime>,
    current: Arc<ModelArtifact>,
}

impl ModelWatcher {
    pub fn new(path: &Path, current: Arc<ModelArtifact>) -> ModelWatcher {
        ModelWatcher { path: path.to_path_buf(), mtime: mtime(path), current }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current(&self) -> &Arc<ModelArtifact> {
        &self.current
    }

    /// The file's modification time differs from the one last loaded.
    pub fn changed_on_disk(&self) -> bool {
        mtime(&self.path) != self.mtime
    }

    /// Load the file; on success it becomes the current model.
    pub fn reload(&mut self) -> Result<Arc<ModelArtifact>, String> {
        self.mtime = mtime(&self.path);
        let art = ModelArtifact::load(&self.path).map_err(|e| e.to_string())?;
        if art.spec != self.current.spec {
            return Err(
                "its feature spec differs from the running model's; restart the service to change features".into()
            );
        }
        self.current = Arc::new(art);
        Ok(self.current.clone())
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
