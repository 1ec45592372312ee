#!/usr/bin/perl
# Verify every DKIM-Signature of the message on stdin with Perl's Mail::DKIM,
# asking the nameserver 127.0.0.1:PORT (a test's private NSD) for the keys.
#
#   perl tests/support/dkim_verify.pl PORT < message
#
# Prints one line per signature: "d=DOMAIN s=SELECTOR a=ALGORITHM RESULT (DETAIL)",
# then "overall: RESULT".  Exit 0 when it ran, whatever the results.
# Debian 12's Mail::DKIM (1.20230212) verifies rsa-sha256; for ed25519-sha256 it
# needs Crypt::PK::Ed25519, which Debian does not ship, and says so in DETAIL.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my $port = shift or die "usage: $0 PORT < message\n";
my $resolver = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0,
    tcp_timeout => 5, udp_timeout => 5, retry => 1,
);
Mail::DKIM::DNS::resolver($resolver);

binmode STDIN;
my $dkim = Mail::DKIM::Verifier->new();
while (my $line = <STDIN>) {
    # Mail::DKIM wants CRLF line ends, which is what the gateway sends.
    $dkim->PRINT($line);
}
$dkim->CLOSE();

foreach my $sig ($dkim->signatures) {
    my $detail = $sig->result_detail // '';
    printf "d=%s s=%s a=%s %s (%s)\n", $sig->domain, $sig->selector,
        $sig->algorithm, $sig->result, $detail;
}
printf "overall: %s\n", $dkim->result;
