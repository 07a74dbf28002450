//! The product's rules as workflows: pure decisions, no actix, sled or clock. The engine runs them.

pub mod ids;
pub mod metering;
pub mod organization;
pub mod pricing;
pub mod subscription;

use std::sync::Arc;

use crate::engine::workflow::DynWorkflow;

/// Every workflow of the service, to register with the engine.
pub fn workflows() -> Vec<Arc<dyn DynWorkflow>> {
    vec![
        Arc::new(subscription::SubscriptionWorkflow),
        Arc::new(organization::OrganizationWorkflow),
        Arc::new(metering::MeteringWorkflow),
    ]
}
