// The PostgreSQL layer; see the files added with it.
