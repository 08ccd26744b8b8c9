//! Watch: one pod watch per executor, run by the replica that holds the executor's reporter
//! Lease, turning pod phases into lifecycle events, failing builds that cannot start, and
//! collecting garbage.

pub mod assess;
mod gc;
pub mod handover;
pub mod lease;
pub mod plan;
pub mod reporter;
mod slim;

/// Makes a pod type of one's own (a struct with `metadata: ObjectMeta` that decodes only what
/// it reads) watchable as core/v1 pods with kube-runtime. The benchmark's baseline uses it too.
#[macro_export]
macro_rules! slim_pod_resource {
    ($ty:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                "Pod".into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                "pods".into()
            }
            fn meta(&self) -> &kube::api::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
