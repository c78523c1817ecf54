# Verifies every DKIM signature of the message on stdin with Mail::DKIM
# (libmail-dkim-perl), an implementation independent of submitd, asking the
# DNS server on 127.0.0.1:PORT for the keys. LF line endings become CRLF.
# Prints one line per signature: "ALGORITHM DOMAIN RESULT", then result=X.
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my ($port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port, recurse => 1));
my $v = Mail::DKIM::Verifier->new();
local $/; my $m = <STDIN>; $m =~ s/\r?\n/\r\n/g;
$v->PRINT($m); $v->CLOSE();
foreach my $s ($v->signatures) { printf "%s %s %s\n", $s->algorithm, $s->domain, $s->result_detail; }
print "result=", $v->result, "\n";
