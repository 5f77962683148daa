//! `baton:plugin/jobs`: the tenant's durable jobs (see [`crate::jobs`]).

use crate::bindings::baton::plugin::jobs::{Error, Host, Options};
use crate::instance::state::InstanceState;

impl Host for InstanceState {
    async fn enqueue(&mut self, _kind: String, _payload: Vec<u8>, _options: Options) -> Result<u64, Error> {
        Err(Error::Unavailable("jobs are being built".into()))
    }

    async fn cancel(&mut self, _job: u64) -> Result<bool, Error> {
        Err(Error::Unavailable("jobs are being built".into()))
    }

    async fn schedule(&mut self, _name: String, _cron: String, _kind: String, _payload: Vec<u8>) -> Result<(), Error> {
        Err(Error::Unavailable("jobs are being built".into()))
    }

    async fn unschedule(&mut self, _name: String) -> Result<bool, Error> {
        Err(Error::Unavailable("jobs are being built".into()))
    }
}
