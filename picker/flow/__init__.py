"""Flow control: priority bands, fairness and late binding between admission and scheduling.

See README.md here. Modules are imported by path (``picker.flow.controller`` …): this
package imports nothing at load, because ``picker.scheduling.config`` reads the profile's
``flow_control`` block through :mod:`picker.flow.config` while the scheduling package loads.
"""
