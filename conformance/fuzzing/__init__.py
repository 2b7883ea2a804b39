"""The property-based search: drawn problems within a candidate's claims, the catalogue's
checks as properties, shrinking and case files."""
