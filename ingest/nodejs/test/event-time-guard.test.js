// The Pub/Sub UDF deploy/pubsub/event-time-guard.js, run as Pub/Sub runs it (a plain function
// declaration, no module), against the cases its Python twin answers in tests/test_event_time_guard.py.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {readFileSync} from 'node:fs';
import vm from 'node:vm';

const root = new URL('../../../', import.meta.url);
const code = readFileSync(new URL('deploy/pubsub/event-time-guard.js', root), 'utf8');
const cases = JSON.parse(readFileSync(new URL('tests/fixtures/event_time_attribute_cases.json', root), 'utf8'));
const context = vm.createContext({});
vm.runInContext(code, context);
const guardEventTime = context.guardEventTime;

for (const item of cases.cases) {
  test(`ts ${JSON.stringify(item.attributes.ts)}`, () => {
    const message = {data: '{"ticks":[]}', attributes: item.attributes};
    const result = guardEventTime(message, {message_id: '1', publish_time: cases.publish_time});
    if (item.expected === null) {
      assert.equal(result, message);
    } else {
      assert.equal(result.data, message.data);
      assert.deepEqual({...result.attributes}, item.expected);
    }
  });
}

test('a message without attributes gets the publish time', () => {
  const result = guardEventTime({data: 'x'}, {publish_time: cases.publish_time});
  assert.deepEqual({...result.attributes}, {ts: String(cases.publish_time_ms), mds_bad_ts: ''});
});
