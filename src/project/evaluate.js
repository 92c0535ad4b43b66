const path = require('path');
const [configPath, kitDir] = process.argv.slice(1);
let api = null;
try { api = require(require.resolve('tsx/cjs/api', { paths: [kitDir] })); } catch (e) {}
(async () => {
  let unregister = null;
  if (api) { unregister = api.register(); }
  let required = require(configPath);
  let config = required && required.default !== undefined ? required.default : required;
  if (config && typeof config.then === 'function') config = await config;
  const loaded = Object.keys(require.cache).filter((f) => !f.split(path.sep).includes('node_modules'));
  const pick = (c) => c && ({ out: c.out, schema: c.schema, dialect: c.dialect, driver: c.driver, dbCredentials: c.dbCredentials, migrations: c.migrations });
  process.stdout.write('\n@@dreamerd-config@@' + JSON.stringify({ config: pick(config), loaded }) + '\n');
})().catch((e) => { process.stderr.write(String((e && e.stack) || e) + '\n'); process.exit(3); });
