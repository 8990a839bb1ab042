//! The Service and EndpointSlice of an HTTP component (what they hold: [`crate::http`]),
//! written by the placement controller after each reconcile of the component. Writes go out
//! only when the stored objects differ from the wanted ones, so the many reconciles an
//! agent's status reports cause cost nothing here unless readiness changed.

use airssys_crds::WasmComponent;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource as _, ResourceExt as _};
use tracing::{debug, info, warn};

use crate::http::{self, Endpoint};
use crate::{Context, Error};

/// Field manager of the operator's HTTP Services and EndpointSlices.
const FIELD_MANAGER: &str = "airssys-operator-http";

/// What an HTTP component should have: its Service port, its agents' port and the agents that
/// serve it now.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<Endpoint>,
}

/// Makes the component's Service and EndpointSlice what `wanted` says, or removes them
/// (`None`: not an HTTP component, or nothing may run).
pub async fn sync(ctx: &Context, c: &WasmComponent, wanted: Option<Wanted>) -> Result<(), Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let uid = c.uid().unwrap_or_default();
    let stored_service = ctx
        .stores
        .services
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|s| owned_by(s.meta(), &uid));
    let slice_name = http::slice_name(&name);
    let stored_slice = ctx
        .stores
        .slices
        .get(&ObjectRef::new(&slice_name).within(&ns))
        .filter(|s| owned_by(s.meta(), &uid));
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);

    let Some(wanted) = wanted else {
        if stored_slice.is_some() {
            delete(&slices, &slice_name).await?;
        }
        if stored_service.is_some() {
            delete(&services, &name).await?;
            info!("removed the HTTP Service");
        }
        return Ok(());
    };

    let service = http::service(c, wanted.port, wanted.target_port);
    if stored_service
        .as_deref()
        .is_none_or(|s| !http::service_matches(s, &service))
    {
        // Not forced: a Service of the same name that someone else wrote is not taken over.
        match services
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&service),
            )
            .await
        {
            Ok(_) => debug!(
                port = wanted.port,
                target_port = wanted.target_port,
                "applied the HTTP Service"
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                warn!(service = %name, message = %s.message, "a Service of this name belongs to someone else; the component gets no Service");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let slice = http::endpoint_slice(c, wanted.target_port, &wanted.endpoints);
    if stored_slice
        .as_deref()
        .is_none_or(|s| !http::slice_matches(s, &slice))
    {
        slices
            .patch(
                &slice_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&slice),
            )
            .await?;
        debug!(
            endpoints = wanted.endpoints.len(),
            "applied the EndpointSlice"
        );
    }
    Ok(())
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
