// Module hooks for the unit tests: `baton:plugin/<iface>@...` resolves to a
// mock whose functions call `globalThis.__batonHost.call(iface, fn, args)`,
// and `@baton/sdk` to the SDK's source (as build-plugin does).

const IFACES = {
  session: ['send', 'close'],
  log: ['log'],
  clock: ['nowMs'],
  tenant: ['name'],
  topics: ['subscribe', 'unsubscribe', 'publish', 'subscribers'],
  presence: ['track', 'untrack', 'list'],
  timers: ['set', 'cancel', 'pending'],
  storage: ['get', 'set', 'delete', 'list'],
  jobs: ['enqueue', 'cancel', 'schedule', 'unschedule'],
  webhooks: ['send'],
};

const SDK = new URL('../../src/', import.meta.url);

export async function resolve(specifier, context, next) {
  const m = /^baton:plugin\/([a-z-]+)@[0-9.]+$/.exec(specifier);
  if (m) {
    if (!IFACES[m[1]]) throw new Error(`no mock for ${specifier}`);
    return { url: `baton-mock:${m[1]}`, shortCircuit: true };
  }
  if (specifier === '@baton/sdk') return { url: new URL('index.js', SDK).href, shortCircuit: true };
  if (specifier === '@baton/sdk/state') return { url: new URL('state.js', SDK).href, shortCircuit: true };
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (url.startsWith('baton-mock:')) {
    const iface = url.slice('baton-mock:'.length);
    const source = IFACES[iface]
      .map((f) => `const _${f} = (...a) => globalThis.__batonHost.call(${JSON.stringify(iface)}, ${JSON.stringify(f)}, a);\nexport { _${f} as ${f} };`)
      .join('\n');
    return { format: 'module', source, shortCircuit: true };
  }
  return next(url, context);
}
