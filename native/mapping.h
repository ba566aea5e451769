/* zoo._native.map_file and its Mapping type (mapping.c). */
#ifndef ZOO_MAPPING_H
#define ZOO_MAPPING_H

#include <Python.h>

/* Adds map_file to the module; 0, or -1 with an exception set. */
int zoo_add_mapping(PyObject *module);

#endif
