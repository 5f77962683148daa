// Builds a JavaScript baton plugin into a component: bundles the plugin with
// @baton/sdk (esbuild), then componentize-js against the baton WIT world.
// Run by `sdk-js/build-plugin`, which installs the pinned tools first and
// sets NODE_PATH to them.
//
//   node build.mjs --entry FILE --out OUT --world WORLD --wit DIR --sdk DIR --deps FILE --tools DIR

import { copyFile, mkdtemp, rename, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve, relative, basename } from 'node:path';
import { pathToFileURL } from 'node:url';

function fail(msg) {
  process.stderr.write(`build-plugin: ${msg}\n`);
  process.exit(1);
}

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i];
  if (!k.startsWith('--') || i + 1 >= process.argv.length) fail(`bad argument ${k}`);
  args[k.slice(2)] = process.argv[i + 1];
}
for (const k of ['entry', 'out', 'world', 'wit', 'sdk', 'deps', 'tools']) if (!args[k]) fail(`missing --${k}`);

const tools = resolve(args.tools);
const entry = resolve(args.entry);
const out = resolve(args.out);
const sdk = resolve(args.sdk);
const started = Date.now();

const esbuild = await import(pathToFileURL(join(tools, 'node_modules/esbuild/lib/main.js')).href).catch((e) =>
  fail(`cannot load esbuild from ${tools}: ${e.message}`),
);
const { componentize } = await import(
  pathToFileURL(join(tools, 'node_modules/@bytecodealliance/componentize-js/src/componentize.js')).href
).catch((e) => fail(`cannot load componentize-js from ${tools}: ${e.message}`));

const work = await mkdtemp(join(tmpdir(), 'baton-js-'));
try {
  // The entry: the plugin module's exports as the world's exports (the
  // world-level functions of the WIT, as named ES exports in camelCase).
  const shim = join(work, 'entry.js');
  await writeFile(
    shim,
    [
      `import * as mod from ${JSON.stringify(entry)};`,
      `import { pluginOf } from '@baton/sdk';`,
      `const plugin = pluginOf(mod, ${JSON.stringify(relative(process.cwd(), entry) || basename(entry))});`,
      `export const { init, onConnect, onFrame, onDisconnect, onHttp, onTimer, onPresence, onJob, onWebhookResult, exportState, importState, migrations } = plugin;`,
      '',
    ].join('\n'),
  );

  // @baton/sdk is the SDK beside this tool (it matches the WIT in the repo).
  const sdkFiles = { '': 'src/index.js', '/state': 'src/state.js' };
  const sdkPlugin = {
    name: 'baton-sdk',
    setup(build) {
      build.onResolve({ filter: /^@baton\/sdk(\/.*)?$/ }, (a) => {
        const sub = a.path.slice('@baton/sdk'.length);
        const file = sdkFiles[sub];
        if (!file) return { errors: [{ text: `@baton/sdk has no module ${a.path}` }] };
        return { path: join(sdk, file) };
      });
    },
  };

  const bundle = join(work, 'plugin.js');
  let result;
  try {
    result = await esbuild.build({
      entryPoints: [shim],
      outfile: bundle,
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      // npm packages beside the plugin: ESM or CommonJS, by `exports`, `module` or `main`.
      mainFields: ['module', 'main'],
      target: 'es2022',
      external: ['baton:*', 'wasi:*'],
      plugins: [sdkPlugin],
      metafile: true,
      keepNames: true,
      logLevel: 'silent',
      absWorkingDir: process.cwd(),
    });
  } catch (e) {
    const first = e.errors && e.errors[0];
    const where = first && first.location ? `${first.location.file}:${first.location.line}:${first.location.column}: ` : '';
    fail(`bundling failed: ${where}${first ? first.text : e.message}`);
  }

  let built;
  try {
    built = await componentize({
      sourcePath: bundle,
      witPath: resolve(args.wit),
      worldName: args.world,
      // baton provides wasi:cli, wasi:clocks, wasi:random, wasi:io and
      // wasi:filesystem (WASI 0.2), but not wasi:http: without these two the
      // component imports no wasi:http.
      disableFeatures: ['http', 'fetch-event'],
    });
  } catch (e) {
    // Its messages span many lines: one line here, all of it in a file.
    const full = String(e && e.message ? e.message : e).trim();
    const report = resolve(args.deps).replace(/\.txt$/, '') + '.error.txt';
    await writeFile(report, full + '\n');
    const lines = full.split('\n').map((l) => l.trim()).filter((l) => l !== '');
    const top = lines.findIndex((l) => l.startsWith('Exception while evaluating top-level script'));
    if (top >= 0 && lines[top + 1]) {
      fail(`the plugin threw while its top level ran (at build time): ${lines[top + 1]} (all of it: ${report})`);
    }
    fail(`componentize-js failed: ${lines[0] ?? 'no message'} (all of it: ${report})`);
  }

  await mkdir(dirname(out), { recursive: true });
  const tmp = join(dirname(out), `.${basename(out)}.${process.pid}.tmp`);
  await writeFile(tmp, built.component);
  await rename(tmp, out);

  // What the next run compares OUT with: the world and every input file.
  const inputs = Object.keys(result.metafile.inputs)
    .map((f) => resolve(process.cwd(), f))
    .filter((f) => !f.startsWith(work));
  await writeFile(resolve(args.deps), [`world=${args.world}`, ...inputs].join('\n') + '\n');
  // The bundle that ran, for the file:line:column of stack traces in the log.
  const kept = resolve(args.deps).replace(/\.txt$/, '') + '.js';
  await copyFile(bundle, kept);

  const mb = (built.component.length / 1048576).toFixed(1);
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  process.stdout.write(`build-plugin: wrote ${out} (${mb} MiB, world ${args.world}, ${secs} s; stack traces refer to ${kept})\n`);
} finally {
  await rm(work, { recursive: true, force: true });
}
