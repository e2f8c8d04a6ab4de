//! The management API server (HTTP/JSON on a Unix socket).
//!
//! Handlers parse the request into engine calls, run them on the blocking
//! pool (engine management calls wait for the writer), reply with the
//! engine's reports converted to `edgevol-api`'s wire types, and map engine
//! errors to HTTP statuses:
//!
//! | engine | HTTP |
//! |---|---|
//! | NotFound | 404 |
//! | AlreadyExists, Busy, ForeignData | 409 |
//! | InvalidArgument | 400 |
//! | ReadOnly | 403 |
//! | NoSpace | 507 |
//! | Shutdown | 503 |
//! | Unsupported | 501 |
//! | Io, Corrupt, Poisoned | 500 |

use std::sync::Arc;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgevol_api::{
    AddVhostUserExport, ChangeKey, CheckReport, CloneVolume, CreatePool, CreateSnapshot,
    CreateVolume, ErrorBody, ErrorDetail, Expanded, ExportInfo, KeyRequest, PoolStatus, Resize,
    RollbackResult, SetProperties, SnapshotInfo, SpaceReport, VhostUserExportInfo, VolumeInfo,
};
use edgevol_engine::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::registry::Registry;
use crate::vhost::{VhostExports, VhostSpec};

/// An API error response.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::Busy | ErrorKind::ForeignData => {
                StatusCode::CONFLICT
            }
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::ReadOnly | ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut message = self.0.to_string();
        let mut src = std::error::Error::source(&self.0);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %message, "API request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.0.kind().as_str().to_string(),
                message,
            },
        };
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Run a blocking engine call off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError),
        Err(e) => Err(ApiError(Error::new(
            ErrorKind::Io,
            format!("API worker failed: {e}"),
        ))),
    }
}

/// Reply with an engine report in its wire type (`edgevol-api` owns the
/// JSON shapes).
fn wire<T, W: From<T>>(report: T) -> ApiResult<W> {
    Ok(Json(W::from(report)))
}

/// Reply with a list of engine reports, each in its wire type.
fn wire_all<T, W: From<T>>(reports: Vec<T>) -> ApiResult<Vec<W>> {
    Ok(Json(reports.into_iter().map(W::from).collect()))
}

type St = State<Arc<Registry>>;

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    reg: Arc<Registry>,
    vhost: Arc<VhostExports>,
}

impl FromRef<AppState> for Arc<Registry> {
    fn from_ref(s: &AppState) -> Arc<Registry> {
        s.reg.clone()
    }
}

impl FromRef<AppState> for Arc<VhostExports> {
    fn from_ref(s: &AppState) -> Arc<VhostExports> {
        s.vhost.clone()
    }
}

/// The router.
pub fn router(reg: Arc<Registry>, vhost: Arc<VhostExports>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/pools", get(list_pools).post(create_pool))
        .route(
            "/v1/pools/{pool}",
            get(pool_status)
                .patch(set_pool_properties)
                .delete(destroy_pool),
        )
        .route("/v1/pools/{pool}/check", post(check_pool))
        .route("/v1/pools/{pool}/scrub", post(scrub_pool))
        .route("/v1/pools/{pool}/replace", post(replace_device))
        .route("/v1/pools/{pool}/add", post(add_devices))
        .route("/v1/pools/{pool}/online", post(online_devices))
        .route(
            "/v1/pools/{pool}/volumes",
            get(list_volumes).post(create_volume),
        )
        .route(
            "/v1/pools/{pool}/volumes/{vol}",
            get(volume_info)
                .patch(set_properties)
                .delete(destroy_volume),
        )
        .route("/v1/pools/{pool}/volumes/{vol}/resize", post(resize_volume))
        .route(
            "/v1/pools/{pool}/volumes/{vol}/promote",
            post(promote_volume),
        )
        .route("/v1/pools/{pool}/volumes/{vol}/space", get(volume_space))
        .route("/v1/pools/{pool}/volumes/{vol}/load-key", post(load_key))
        .route(
            "/v1/pools/{pool}/volumes/{vol}/unload-key",
            post(unload_key),
        )
        .route(
            "/v1/pools/{pool}/volumes/{vol}/change-key",
            post(change_key),
        )
        .route(
            "/v1/pools/{pool}/volumes/{vol}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/pools/{pool}/volumes/{vol}/snapshots/{snap}",
            axum::routing::delete(destroy_snapshot),
        )
        .route(
            "/v1/pools/{pool}/volumes/{vol}/snapshots/{snap}/rollback",
            post(rollback),
        )
        .route(
            "/v1/pools/{pool}/volumes/{vol}/snapshots/{snap}/clone",
            post(clone_snapshot),
        )
        .route("/v1/exports", get(exports))
        .route(
            "/v1/exports/vhost-user",
            get(list_vhost).post(add_vhost).delete(remove_vhost),
        )
        .with_state(AppState { reg, vhost })
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// A pool in a listing: its status, or why it could not be imported.
#[derive(Serialize)]
#[serde(untagged)]
enum PoolListEntry {
    Ok(Box<PoolStatus>),
    Failed {
        name: String,
        state: &'static str,
        error: String,
    },
}

async fn list_pools(State(reg): St) -> ApiResult<Vec<PoolListEntry>> {
    let r = blocking(move || {
        let mut v: Vec<PoolListEntry> = reg
            .pools()
            .iter()
            .map(|p| PoolListEntry::Ok(Box::new(p.status().into())))
            .collect();
        v.extend(
            reg.failed()
                .into_iter()
                .map(|(name, error)| PoolListEntry::Failed {
                    name,
                    state: "UNAVAIL",
                    error,
                }),
        );
        Ok(v)
    })
    .await?;
    Ok(Json(r))
}

async fn create_pool(State(reg): St, Json(req): Json<CreatePool>) -> ApiResult<PoolStatus> {
    let r = blocking(move || {
        // Validate the properties before anything is written.
        for (k, v) in &req.properties {
            edgevol_engine::check_pool_property(k, Some(v))?;
        }
        let p = reg.create_pool(
            &req.name,
            &req.devices,
            req.size,
            req.segment_size,
            req.force,
        )?;
        for (k, v) in &req.properties {
            p.set_pool_property(k, Some(v))?;
        }
        Ok(p.status())
    })
    .await?;
    wire(r)
}

async fn pool_status(State(reg): St, Path(pool): Path<String>) -> ApiResult<PoolStatus> {
    wire(blocking(move || reg.pool_status(&pool)).await?)
}

async fn set_pool_properties(
    State(reg): St,
    Path(pool): Path<String>,
    Json(req): Json<SetProperties>,
) -> ApiResult<PoolStatus> {
    wire(
        blocking(move || {
            let p = reg.pool(&pool)?;
            for (k, v) in &req.properties {
                p.set_pool_property(k, v.as_deref())?;
            }
            Ok(p.status())
        })
        .await?,
    )
}

#[derive(Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn destroy_pool(
    State(reg): St,
    Path(pool): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<()> {
    blocking(move || reg.destroy_pool(&pool, q.force)).await?;
    Ok(Json(()))
}

async fn check_pool(State(reg): St, Path(pool): Path<String>) -> ApiResult<CheckReport> {
    wire(blocking(move || reg.pool(&pool)?.check()).await?)
}

async fn scrub_pool(
    State(reg): St,
    Path(pool): Path<String>,
    Json(req): Json<edgevol_api::ScrubRequest>,
) -> ApiResult<PoolStatus> {
    wire(
        blocking(move || {
            let p = reg.pool(&pool)?;
            if req.stop {
                p.scrub_stop()?;
            } else {
                p.scrub_start()?;
            }
            Ok(p.status())
        })
        .await?,
    )
}

async fn replace_device(
    State(reg): St,
    Path(pool): Path<String>,
    Json(req): Json<edgevol_api::ReplaceDevice>,
) -> ApiResult<PoolStatus> {
    wire(
        blocking(move || {
            reg.replace_device(&pool, &req.old, &req.new, req.force)?;
            Ok(reg.pool(&pool)?.status())
        })
        .await?,
    )
}

async fn add_devices(
    State(reg): St,
    Path(pool): Path<String>,
    Json(req): Json<edgevol_api::AddDevices>,
) -> ApiResult<PoolStatus> {
    wire(
        blocking(move || {
            reg.add_devices(&pool, &req.devices, req.size, req.force)?;
            Ok(reg.pool(&pool)?.status())
        })
        .await?,
    )
}

/// The groups that grew, and the pool's status after.
#[derive(serde::Serialize)]
struct OnlineReply {
    expanded: Vec<Expanded>,
    status: PoolStatus,
}

async fn online_devices(
    State(reg): St,
    Path(pool): Path<String>,
    Json(req): Json<edgevol_api::OnlineDevices>,
) -> ApiResult<OnlineReply> {
    Ok(Json(
        blocking(move || {
            if !req.expand {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "nothing to do: give expand (a faulted device comes back with `pool replace`)",
                ));
            }
            let p = reg.pool(&pool)?;
            let expanded = p.expand(req.device.as_deref())?;
            Ok(OnlineReply {
                expanded: expanded.into_iter().map(Expanded::from).collect(),
                status: p.status().into(),
            })
        })
        .await?,
    ))
}

async fn list_volumes(State(reg): St, Path(pool): Path<String>) -> ApiResult<Vec<VolumeInfo>> {
    wire_all(blocking(move || Ok(reg.pool(&pool)?.volumes())).await?)
}

async fn create_volume(
    State(reg): St,
    Path(pool): Path<String>,
    Json(req): Json<CreateVolume>,
) -> ApiResult<VolumeInfo> {
    wire(
        blocking(move || {
            let secret = secret_of(req.secret_hex.as_deref())?;
            reg.pool(&pool)?
                .create_volume_with_key(&req.name, req.size, req.properties, secret)
        })
        .await?,
    )
}

/// Decode an API secret (hex) into zeroed-on-drop bytes.
fn secret_of(hex: Option<&str>) -> edgevol_engine::Result<Option<edgevol_engine::crypt::Secret>> {
    hex.map(|h| {
        edgevol_api::hex_decode(h)
            .map(edgevol_engine::crypt::Secret::new)
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "secret_hex is not hex"))
    })
    .transpose()
}

async fn load_key(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
    body: Option<Json<KeyRequest>>,
) -> ApiResult<VolumeInfo> {
    let req = body.map(|b| b.0).unwrap_or_default();
    wire(
        blocking(move || {
            let p = reg.pool(&pool)?;
            p.load_key(&vol, secret_of(req.secret_hex.as_deref())?)?;
            p.volume_info(&vol)
        })
        .await?,
    )
}

async fn unload_key(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<VolumeInfo> {
    wire(
        blocking(move || {
            let users = reg.attached_to_volume(&pool, &vol);
            if users > 0 && !q.force {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("volume {pool}/{vol} has {users} attached clients; disconnect them or use --force"),
                ));
            }
            let p = reg.pool(&pool)?;
            p.unload_key(&vol)?;
            p.volume_info(&vol)
        })
        .await?,
    )
}

async fn change_key(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
    Json(req): Json<ChangeKey>,
) -> ApiResult<VolumeInfo> {
    wire(
        blocking(move || {
            let p = reg.pool(&pool)?;
            p.change_key(
                &vol,
                req.keyformat.as_deref(),
                req.keylocation.as_deref(),
                edgevol_engine::crypt::KdfParams::from_options(
                    req.argon2_memory.as_deref(),
                    req.argon2_passes.as_deref(),
                )?,
                secret_of(req.secret_hex.as_deref())?,
            )?;
            p.volume_info(&vol)
        })
        .await?,
    )
}

async fn volume_info(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<VolumeInfo> {
    wire(blocking(move || reg.pool(&pool)?.volume_info(&vol)).await?)
}

async fn set_properties(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
    Json(req): Json<SetProperties>,
) -> ApiResult<VolumeInfo> {
    wire(
        blocking(move || {
            let p = reg.pool(&pool)?;
            for (k, v) in &req.properties {
                p.set_property(&vol, k, v.as_deref())?;
            }
            p.volume_info(&vol)
        })
        .await?,
    )
}

async fn destroy_volume(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<()> {
    blocking(move || {
        let users = reg.attached_to_volume(&pool, &vol);
        if users > 0 && !q.force {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("volume {pool}/{vol} has {users} attached clients; disconnect them or use --force"),
            ));
        }
        reg.pool(&pool)?.destroy_volume(&vol, q.force)
    })
    .await?;
    Ok(Json(()))
}

async fn resize_volume(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
    Json(req): Json<Resize>,
) -> ApiResult<VolumeInfo> {
    wire(
        blocking(move || {
            let p = reg.pool(&pool)?;
            p.resize_volume(&vol, req.size, req.force)?;
            p.volume_info(&vol)
        })
        .await?,
    )
}

async fn promote_volume(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<VolumeInfo> {
    wire(
        blocking(move || {
            let p = reg.pool(&pool)?;
            p.promote(&vol)?;
            p.volume_info(&vol)
        })
        .await?,
    )
}

async fn volume_space(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<SpaceReport> {
    wire(blocking(move || reg.pool(&pool)?.space(&vol)).await?)
}

async fn list_snapshots(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<Vec<SnapshotInfo>> {
    wire_all(blocking(move || reg.pool(&pool)?.snapshots(&vol)).await?)
}

async fn create_snapshot(
    State(reg): St,
    Path((pool, vol)): Path<(String, String)>,
    Json(req): Json<CreateSnapshot>,
) -> ApiResult<SnapshotInfo> {
    wire(blocking(move || reg.pool(&pool)?.snapshot(&vol, &req.name)).await?)
}

async fn destroy_snapshot(
    State(reg): St,
    Path((pool, vol, snap)): Path<(String, String, String)>,
) -> ApiResult<()> {
    blocking(move || {
        let users = reg.attached_to_volume(&pool, &format!("{vol}@{snap}"));
        if users > 0 {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("snapshot {pool}/{vol}@{snap} has {users} attached clients"),
            ));
        }
        reg.pool(&pool)?.destroy_snapshot(&vol, &snap)
    })
    .await?;
    Ok(Json(()))
}

async fn rollback(
    State(reg): St,
    Path((pool, vol, snap)): Path<(String, String, String)>,
) -> ApiResult<RollbackResult> {
    Ok(Json(
        blocking(move || {
            let p = reg.pool(&pool)?;
            let previous_head = p.rollback(&vol, &snap)?;
            Ok(RollbackResult {
                previous_head,
                volume: p.volume_info(&vol)?.into(),
            })
        })
        .await?,
    ))
}

async fn clone_snapshot(
    State(reg): St,
    Path((pool, vol, snap)): Path<(String, String, String)>,
    Json(req): Json<CloneVolume>,
) -> ApiResult<VolumeInfo> {
    wire(blocking(move || reg.pool(&pool)?.clone_snapshot(&vol, &snap, &req.name)).await?)
}

async fn exports(State(reg): St) -> ApiResult<Vec<ExportInfo>> {
    Ok(Json(
        reg.attachments()
            .into_iter()
            .map(|(name, transport, n)| ExportInfo {
                read_only: name.contains('@'),
                name,
                transport: transport.into(),
                connections: n,
            })
            .collect(),
    ))
}

type Vh = State<Arc<VhostExports>>;

async fn list_vhost(State(vh): Vh) -> ApiResult<Vec<VhostUserExportInfo>> {
    Ok(Json(vh.list()))
}

async fn add_vhost(
    State(vh): Vh,
    Json(req): Json<AddVhostUserExport>,
) -> ApiResult<VhostUserExportInfo> {
    Ok(Json(
        blocking(move || {
            let spec = VhostSpec::from_request(&req)?;
            vh.add(spec, req.persistent.unwrap_or(true))
        })
        .await?,
    ))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    socket: Option<String>,
    #[serde(default)]
    volume: Option<String>,
    #[serde(default)]
    force: bool,
}

async fn remove_vhost(
    State(vh): Vh,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Vec<VhostUserExportInfo>> {
    Ok(Json(
        blocking(move || {
            if q.socket.is_none() && q.volume.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "give socket=PATH or volume=POOL/VOL",
                ));
            }
            vh.remove(q.socket.as_deref(), q.volume.as_deref(), q.force)
        })
        .await?,
    ))
}
