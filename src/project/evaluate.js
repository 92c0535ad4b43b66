const path = require('path');
// Which environment variables the config reads: a cached evaluation stays valid while those keep their values.
const envRead = new Set();
let envListed = false;
try {
  const real = process.env;
  const note = (k) => { if (typeof k === 'string') envRead.add(k); };
  process.env = new Proxy(real, {
    get(t, k) { note(k); return Reflect.get(t, k); },
    has(t, k) { note(k); return Reflect.has(t, k); },
    getOwnPropertyDescriptor(t, k) { note(k); return Reflect.getOwnPropertyDescriptor(t, k); },
    ownKeys(t) { envListed = true; return Reflect.ownKeys(t); },
  });
} catch (e) { envListed = true; }
// Under bun, Bun.env and import.meta.env read the environment past the proxy: all of it counts.
if (typeof Bun !== 'undefined') envListed = true;
const [configPath, kitDir] = process.argv.slice(1);
let api = null;
try { api = require(require.resolve('tsx/cjs/api', { paths: [kitDir] })); } catch (e) {}
// drizzle-kit 1.0 has no tsx: it loads a TypeScript config with the jiti bundled in its bin.cjs. The same jiti is
// taken from there (the file compiled without its last line, which runs the CLI), its disk cache off: nothing is
// written into the project.
function kitJiti() {
  const fs = require('fs');
  const Module = require('module');
  const bin = path.join(kitDir, 'bin.cjs');
  let src = fs.readFileSync(bin, 'utf8');
  const end = src.lastIndexOf('\nmain();');
  if (end < 0 || !src.includes('var require_jiti =')) return null;
  src = src.slice(0, end) + '\nmodule.exports = { createJiti: require_jiti().createJiti };\n';
  const m = new Module(bin, null);
  m.filename = bin;
  m.paths = Module._nodeModulePaths(kitDir);
  m._compile(src, bin);
  return m.exports.createJiti(path.dirname(configPath), { interopDefault: true, fsCache: false });
}
(async () => {
  let unregister = null;
  if (api) { unregister = api.register(); }
  let jiti = null;
  if (!api && typeof Bun === 'undefined' && /\.[cm]?ts$/.test(configPath)) { try { jiti = kitJiti(); } catch (e) {} }
  let required = jiti ? await jiti.import(configPath) : require(configPath);
  let config = required && required.default !== undefined ? required.default : required;
  if (config && typeof config.then === 'function') config = await config;
  const loaded = Object.keys(require.cache).filter((f) => !f.split(path.sep).includes('node_modules'));
  const pick = (c) => c && ({ out: c.out, schema: c.schema, dialect: c.dialect, driver: c.driver, dbCredentials: c.dbCredentials, migrations: c.migrations });
  process.stdout.write('\n@@dreamerd-config@@' + JSON.stringify({ config: pick(config), loaded, env: envListed ? null : [...envRead] }) + '\n');
})().catch((e) => { process.stderr.write(String((e && e.stack) || e) + '\n'); process.exit(3); });
