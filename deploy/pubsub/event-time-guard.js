/**
 * Pub/Sub single message transform (JavaScript UDF) on the Dataflow subscription.
 *
 * The pipeline reads event time from the `ts` attribute (ms since epoch) through Dataflow's
 * Pub/Sub source (`timestamp_attribute`). That source cannot hand a message with a missing or
 * unparsable timestamp attribute to user code, so one such message would stall the job. This
 * UDF runs before delivery: a `ts` that is not a canonical integer of milliseconds between 0 and
 * 9999-12-31T23:59:59.999Z is replaced by the message's publish time, and the original value
 * is kept in `mds_bad_ts` ("" when it was missing), so the pipeline dead-letters the message
 * with its payload instead of stalling. Valid messages pass unchanged.
 *
 * Twin of ingest/message.py `guard_event_time` (the local DirectRunner read applies that one);
 * tests/fixtures/event_time_attribute_cases.json holds the cases both must answer alike.
 * Docs: https://cloud.google.com/pubsub/docs/smts/udfs-overview
 */
function guardEventTime(message, metadata) {
  var MAX_MS = 253402300799999;
  var attributes = message.attributes || {};
  var ts = attributes.ts;
  if (typeof ts === 'string' && /^(0|[1-9][0-9]{0,14})$/.test(ts) && Number(ts) <= MAX_MS) {
    return message;
  }
  var publishMs = metadata && metadata.publish_time ? Date.parse(metadata.publish_time) : NaN;
  if (!(publishMs >= 0 && publishMs <= MAX_MS)) {
    publishMs = Date.now();
  }
  var guarded = {};
  for (var name in attributes) {
    if (Object.prototype.hasOwnProperty.call(attributes, name)) {
      guarded[name] = attributes[name];
    }
  }
  guarded.mds_bad_ts = typeof ts === 'string' ? ts : '';
  guarded.ts = String(Math.floor(publishMs));
  return {data: message.data, attributes: guarded};
}
