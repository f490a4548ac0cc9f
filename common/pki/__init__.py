"""PKI: keys, certificates, key files (mode 0600), trust (path validation) and revocation.

Its errors say why a certificate or key was refused; they carry no wire codes.
"""
