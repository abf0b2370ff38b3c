"""`dcl fleet`: a method's device rounds as a Flower app, on the Simulation Engine (Ray) or the
Deployment Engine (a SuperLink and SuperNode processes); run.py drives it, app.py is the app the
deployment's processes load, flower_app/ the folder `flwr run` submits."""
