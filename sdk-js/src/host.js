// The host's imports, in one place: everything the SDK calls on the host
// goes through these names. The interface version must be the one of the
// WIT package the plugin is built against (`wit/plugin.wit`).

export { send as sessionSend, close as sessionClose } from 'baton:plugin/session@0.1.4';
export { log as hostLog } from 'baton:plugin/log@0.1.4';
export { nowMs as clockNowMs } from 'baton:plugin/clock@0.1.4';
export { name as tenantNameRaw } from 'baton:plugin/tenant@0.1.4';
export {
  subscribe as topicsSubscribe,
  unsubscribe as topicsUnsubscribe,
  publish as topicsPublish,
  subscribers as topicsSubscribers,
} from 'baton:plugin/topics@0.1.4';
export {
  track as presenceTrack,
  untrack as presenceUntrack,
  list as presenceList,
} from 'baton:plugin/presence@0.1.4';
export {
  set as timersSet,
  cancel as timersCancel,
  pending as timersPending,
} from 'baton:plugin/timers@0.1.4';
export {
  get as storageGet,
  set as storageSet,
  delete as storageDelete,
  list as storageList,
} from 'baton:plugin/storage@0.1.4';
export {
  enqueue as jobsEnqueue,
  cancel as jobsCancel,
  schedule as jobsSchedule,
  unschedule as jobsUnschedule,
} from 'baton:plugin/jobs@0.1.4';
export { send as webhooksSend } from 'baton:plugin/webhooks@0.1.4';
