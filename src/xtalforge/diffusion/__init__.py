"""The noise processes of DAO-G: a DDPM on the lattice and a wrapped normal on fractional coordinates, plus samplers."""
